"""Atomic writes: a reader sees the old file (or folder) or the complete new one, never half of one.

Every file and folder nextscale writes goes through here:

* :func:`atomic_path` a file (images, safetensors, npz, training checkpoints with ``durable=True``),
* :func:`atomic_dir` a folder (pipeline / tokenizer directories, token caches),
* :func:`write_json` a JSON file (run configs, reports, metadata).

The temp is ``.NAME.PID.XXXXXX.tmp`` beside the target (the same file system, so ``os.replace`` is
atomic on POSIX); it gets the mode a plain ``open`` / ``mkdir`` would give (temp files are created
0600), is moved into place when the block succeeds and removed when it raises. Temps left by a writer
that was killed (``kill -9``: no cleanup ran) are found by their PID and removed by the next writer of
the same name.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any, Iterator

from nextscale.errors import NextScaleError

__all__ = ["atomic_path", "atomic_dir", "write_json", "apply_umask", "pid_alive", "remove_dead_temps"]


def _umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def apply_umask(path) -> None:
    """Give ``path`` (a file, or a directory tree) the mode a plain ``open``/``mkdir`` would have:
    0666 / 0777 minus the umask. Temp files and dirs (``mkstemp``, ``mkdtemp``, safetensors) are
    created 0600 / 0700, which a rename would otherwise keep."""
    mask = _umask()
    path = os.fspath(path)
    if os.path.isdir(path) and not os.path.islink(path):
        for root, dirs, files in os.walk(path):
            os.chmod(root, 0o777 & ~mask)
            for f in files:
                fp = os.path.join(root, f)
                if not os.path.islink(fp):
                    os.chmod(fp, 0o666 & ~mask)
    elif os.path.isfile(path):
        os.chmod(path, 0o666 & ~mask)


def pid_alive(pid: int) -> bool:
    """Whether process ``pid`` exists (on this machine)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def remove_dead_temps(folder, name: str) -> None:
    """Remove the temps ``.NAME.PID.*.tmp`` (files or folders) in ``folder`` of writers that died
    before their rename; the temps of live writers (another process, this one) are kept."""
    prefix = f".{name}."
    try:
        names = os.listdir(folder)
    except OSError:
        return
    for n in names:
        if not (n.startswith(prefix) and n.endswith(".tmp")):
            continue
        pid = n[len(prefix) :].split(".", 1)[0]
        if pid.isdigit() and int(pid) != os.getpid() and not pid_alive(int(pid)):
            p = os.path.join(folder, n)
            if os.path.isdir(p) and not os.path.islink(p):
                shutil.rmtree(p, ignore_errors=True)
            else:
                with contextlib.suppress(OSError):
                    os.remove(p)


def _named(e: OSError, path, tmp) -> BaseException:
    """An error of writing our hidden temp ``tmp`` as one naming the user's ``path`` (ENOSPC, EROFS ...)."""
    if str(tmp) in str(getattr(e, "filename", "") or "") or str(tmp) in str(getattr(e, "filename2", "") or ""):
        return NextScaleError(f"{path}: cannot write here ({e.strerror or type(e).__name__})")
    return e


def _fsync(path: str) -> None:
    with contextlib.suppress(OSError):
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


@contextlib.contextmanager
def atomic_path(path, *, durable: bool = False, sweep: bool = True) -> Iterator[str]:
    """Yield a fresh, empty temp file beside ``path`` to write; it replaces ``path`` when the block
    succeeds and is removed when it raises.

    ``durable``: fsync the file before the rename and the folder after it, so that a power cut
    cannot leave a renamed but empty file (training checkpoints). ``sweep``: first remove dead
    writers' temps of this name (a folder listing; a caller writing thousands of files into one
    folder sweeps once itself)."""
    path = os.fspath(path)
    d = os.path.dirname(os.path.abspath(path)) or "."
    name = os.path.basename(path)
    if sweep:
        remove_dead_temps(d, name)
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{name}.{os.getpid()}.", suffix=".tmp", dir=d)
    except OSError as e:  # name the file the user asked for, not our hidden temp file
        raise NextScaleError(f"{path}: cannot write here ({e.strerror or type(e).__name__})") from None
    os.close(fd)
    try:
        yield tmp
        apply_umask(tmp)
        if durable:
            _fsync(tmp)
        os.replace(tmp, path)
        if durable:
            _fsync(d)
    except BaseException as e:
        if os.path.exists(tmp):
            os.remove(tmp)
        if isinstance(e, OSError) and _named(e, path, tmp) is not e:
            raise _named(e, path, tmp) from None
        raise


@contextlib.contextmanager
def atomic_dir(out) -> Iterator[Path]:
    """Yield a fresh temp folder beside ``out`` to fill; on success it becomes ``out`` (an existing
    ``out`` is swapped out, then removed), on error it is removed."""
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise NextScaleError(f"{out}: is an existing file, not a folder; give a folder path")
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        remove_dead_temps(out.parent, out.name)
        tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.{os.getpid()}.", suffix=".tmp", dir=out.parent))
    except OSError as e:  # name the folder the user asked for, not our hidden temp folder
        raise NextScaleError(f"{out}: cannot write here ({e.strerror or type(e).__name__})") from None
    try:
        yield tmp
        apply_umask(tmp)
        if out.exists():
            old = Path(tempfile.mkdtemp(prefix=f".{out.name}.{os.getpid()}.", suffix=".tmp", dir=out.parent))
            os.replace(out, old)  # onto the empty folder just made: a rename, atomic
            os.replace(tmp, out)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, out)
    except BaseException as e:
        shutil.rmtree(tmp, ignore_errors=True)
        if isinstance(e, OSError) and _named(e, out, tmp) is not e:
            raise _named(e, out, tmp) from None
        raise


def write_json(path, obj: Any, indent: int = 2) -> None:
    """``json.dump(obj)`` to ``path`` atomically."""
    with atomic_path(path) as tmp, open(tmp, "w") as f:
        json.dump(obj, f, indent=indent)
