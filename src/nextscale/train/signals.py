"""SIGTERM / SIGINT during training (:class:`StopSignals`): the first one requests a checkpoint and a
clean exit at the next step boundary; a second Ctrl-C gives up at once. Every rank stops at the
same step (the request is all-reduced)."""

from __future__ import annotations

import signal
import threading
from typing import Optional

import torch

from nextscale import dist

__all__ = ["StopSignals"]


class StopSignals:
    def __init__(self, world: int = 1):
        self.world = world
        self.signum: Optional[int] = None
        self._old = {}

    def _handler(self, signum, frame):
        if self.signum is not None and signum == signal.SIGINT:
            raise KeyboardInterrupt  # second Ctrl-C: give up immediately
        self.signum = signum

    def __enter__(self) -> "StopSignals":
        """Install the handlers (only possible, and only done, on the main thread)."""
        if threading.current_thread() is threading.main_thread():
            self._old = {s: signal.signal(s, self._handler) for s in (signal.SIGTERM, signal.SIGINT)}
        return self

    def __exit__(self, *exc) -> None:
        for s, h in self._old.items():
            signal.signal(s, h)
        self._old = {}

    def requested(self) -> Optional[int]:
        """The signal number when a stop was requested on any rank, else None (collective when world > 1)."""
        flag = torch.tensor(float(self.signum or 0))
        if self.world > 1:  # every rank must stop at the same step
            flag = dist.all_reduce_max(flag)
        return int(flag.item()) or None
