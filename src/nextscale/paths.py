"""The one check of a path a user gave: what it must be (a file to read, a folder, a folder or file to
write) and, when it is not, the true reason in one line naming the user's path.

Kinds (a setting's ``path=`` rule, see :mod:`nextscale.settings`):

* ``file``: an existing regular file to read (not a folder, FIFO or device such as ``/dev/zero``),
* ``dir``: an existing folder to read,
* ``entry``: an existing file or folder (a run folder or a checkpoint, a folder of PNGs or an .npz),
* ``model``: ``entry``, or a name that is no local path (``default``, ``random``, a hub id ``org/name``),
* ``out_dir``: a folder to create or continue: not an existing file; its nearest existing parent is
  a folder where this process can create files (tried, not guessed: ``os.access`` says yes to root
  on a read-only mount or ``/proc``),
* ``out_file``: a file to write: not an existing folder; its folder (or nearest existing parent) writable.

Nothing is created: the write test makes a hidden file and removes it at once.
"""

from __future__ import annotations

import errno
import os
import re
import stat
import tempfile
from typing import Optional

__all__ = ["PATH_KINDS", "path_problem", "writable_problem", "looks_like_local_path"]

PATH_KINDS = ("file", "dir", "entry", "model", "out_dir", "out_file")

#: file endings that make a model name a local path
_WEIGHT_EXTS = (".pth", ".pt", ".safetensors", ".bin", ".ckpt", ".npz", ".json", ".jsonl")
#: ``org/name`` (a hub id): no local path unless it exists
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")


def _what(mode: int) -> str:
    if stat.S_ISFIFO(mode):
        return "a FIFO (named pipe)"
    if stat.S_ISCHR(mode):
        return "a character device"
    if stat.S_ISBLK(mode):
        return "a block device"
    if stat.S_ISSOCK(mode):
        return "a socket"
    return "not a regular file"


def looks_like_local_path(value: str) -> bool:
    """Whether a model name is meant as a local path: it exists, or it is written as one (a folder
    part, ``./``, ``~``, a weights extension) and is no ``org/name`` hub id; bare names (``default``,
    ``random``, ``tiny``) are the loaders' to resolve."""
    if os.path.lexists(value):
        return True
    if _HUB_ID.match(value):
        return False
    return os.sep in value or value.startswith(("~", ".")) or value.endswith(_WEIGHT_EXTS)


def writable_problem(folder: str) -> Optional[str]:
    """Why no file can be created in ``folder`` (None: one can); tried with a hidden file removed at once."""
    try:
        fd, tmp = tempfile.mkstemp(prefix=".nextscale-write-test.", dir=folder)
    except OSError as e:
        why = "the file system refuses new files" if e.errno == errno.ENOENT else (e.strerror or type(e).__name__)
        return f"cannot be written: {folder} is not writable ({why})"
    os.close(fd)
    os.remove(tmp)
    return None


def _nearest_existing(path: str) -> str:
    p = os.path.abspath(path)
    while not os.path.lexists(p):
        p = os.path.dirname(p)
    return p


def _out_problem(path: str, want_dir: bool) -> Optional[str]:
    if os.path.isdir(path):
        return writable_problem(path) if want_dir else "is a folder; give a file name"
    if os.path.lexists(path):
        if want_dir:
            return "is an existing file, not a folder; give a folder path"
        st = os.stat(path)
        if not stat.S_ISREG(st.st_mode):
            return f"is {_what(st.st_mode)}, not a regular file"
        folder = os.path.dirname(os.path.abspath(path))
    else:
        folder = _nearest_existing(os.path.dirname(os.path.abspath(path)))
        if not os.path.isdir(folder):
            return f"cannot be created: {folder} is a file, not a folder"
    return writable_problem(folder)


def path_problem(value, kind: str) -> Optional[str]:
    """Why ``value`` is not a path of ``kind`` (see the module doc), as the end of a sentence that starts
    with the path; None when it is fine (or ``value`` is None)."""
    if value is None:
        return None
    path = os.fspath(value)
    if kind == "model" and not looks_like_local_path(path):
        return None
    if kind in ("out_dir", "out_file"):
        return _out_problem(path, kind == "out_dir")
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return "does not exist"
    except NotADirectoryError:
        return "does not exist (a part of it is a file)"
    except OSError as e:
        return f"cannot be read ({e.strerror})"
    is_dir = stat.S_ISDIR(st.st_mode)
    if kind == "file" and is_dir:
        return "is a folder, not a file"
    if kind == "dir" and not is_dir:
        return "is a file, not a folder" if stat.S_ISREG(st.st_mode) else f"is {_what(st.st_mode)}, not a folder"
    if not is_dir and not stat.S_ISREG(st.st_mode):
        return f"is {_what(st.st_mode)}, not a regular file"
    if not os.access(path, os.R_OK):
        return "is not readable (permission denied)"
    return None
