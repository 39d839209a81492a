"""Command-line interface: ``nextscale <command> ...`` (also ``python -m nextscale``).

Every command is a thin call into the library. User errors (bad values, missing files, checkpoints
that do not fit) print one line ``nextscale: error: ...`` and exit with code 2; no traceback.
Each command registers itself with ``@command(name, help)`` in its own section below.
"""
from __future__ import annotations

import argparse
import os
import sys
from typing import Callable, Dict, List, Optional

from nextscale.errors import NextScaleError

_REGISTRY: Dict[str, Callable[[argparse._SubParsersAction], None]] = {}


def command(name: str):
    """Register ``fn(subparsers)`` that adds the parser for ``name`` and sets ``func``."""
    def deco(fn):
        _REGISTRY[name] = fn
        return fn
    return deco


class _Parser(argparse.ArgumentParser):
    def error(self, message):  # argparse's own usage errors: one line too, exit 2
        self.exit(2, f"nextscale {self.prog.split()[-1] if ' ' in self.prog else ''}: error: {message}\n".replace("  ", " "))


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(prog="nextscale", description="VAR next-scale prediction: sample, edit, train, evaluate.")
    sub = p.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    for name in _REGISTRY:
        _REGISTRY[name](sub)
    return p


def main(argv: Optional[List[str]] = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        rc = args.func(args)
        return int(rc or 0)
    except (NextScaleError, ValueError, FileNotFoundError, PermissionError, IsADirectoryError, NotADirectoryError) as e:
        if os.environ.get("NEXTSCALE_DEBUG"):
            raise
        msg = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        print(f"nextscale: error: {msg}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("nextscale: interrupted", file=sys.stderr)
        return 130


# ---------------------------------------------------------------------------------------------
# Commands. Each lives in its own section; keep imports of heavy modules inside the functions.
# ---------------------------------------------------------------------------------------------

# == core: sample / info / convert (nextscale.pipelines, nextscale.hub) ==
# (filled in by the core)

# == evaluation: sample-fid / fid ==

# == training: train / tokenize / export / train-tokenizer / eval-tokenizer ==

# == editing: edit ==

# == demo ==
