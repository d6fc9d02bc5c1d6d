"""Atomic file writes: a failed write never leaves a half-written file behind."""

from __future__ import annotations

import os
import stat
import tempfile
from typing import Union

PathLike = Union[str, "os.PathLike[str]"]


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def write_atomic(path: PathLike, data: bytes) -> None:
    """Writes ``data`` to ``path`` through a temporary file in the same directory
    and ``os.replace``: readers see the old file or the new one, never a part.

    The result has the mode a plain ``open(path, "wb")`` would give it: an
    existing file keeps its mode, a new one gets ``0o666 & ~umask`` (``mkstemp``
    alone would leave it ``0o600``, unreadable to other users and tools).
    """
    path = os.fspath(path)
    directory = os.path.dirname(os.path.abspath(path))
    try:
        mode = stat.S_IMODE(os.stat(path).st_mode)
    except FileNotFoundError:
        mode = 0o666 & ~_umask()
    fd, tmp = tempfile.mkstemp(prefix=os.path.basename(path) + ".", suffix=".tmp", dir=directory)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.chmod(tmp, mode)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise
