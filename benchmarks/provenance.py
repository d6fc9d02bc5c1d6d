"""Where a generated table came from: the command and the commit that produced it.

Every page the benchmarks write into ``docs/`` starts with
:func:`stamp`'s line, so a reader can tell which code made the numbers and rerun it.

    >>> line = stamp(["benchmarks/step_time.py", "--batch=64"])
    >>> line.startswith("Made by `python benchmarks/step_time.py --batch=64` at commit ")
    True
"""

from __future__ import annotations

import datetime
import os
import subprocess
import sys
from typing import Optional, Sequence

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# The code whose edits change the numbers; docs written while a benchmark runs do not.
CODE_PATHS = ("tf_bitpruning", "benchmarks", "examples", "setup.py")


def _git(*args: str) -> str:
    try:
        return subprocess.run(["git", *args], cwd=ROOT, capture_output=True, text=True,
                              check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return ""


def commit() -> str:
    """The short hash of HEAD, with ``+uncommitted changes`` when the code differs from it
    (``unknown`` outside a git checkout)."""
    head = _git("rev-parse", "--short", "HEAD") or "unknown"
    if _git("status", "--porcelain", "--", *CODE_PATHS):
        head += "+uncommitted changes"
    return head


def command(argv: Optional[Sequence[str]] = None) -> str:
    """``python <script relative to the repository> ARGS`` for ``argv`` (default ``sys.argv``)."""
    argv = list(sys.argv if argv is None else argv)
    script = os.path.abspath(argv[0])
    if script.startswith(ROOT + os.sep):
        script = os.path.relpath(script, ROOT)
    return " ".join(["python", script.replace(os.sep, "/"), *argv[1:]])


def stamp(argv: Optional[Sequence[str]] = None, when: Optional[datetime.date] = None) -> str:
    """"Made by `python benchmarks/X.py ARGS` at commit <hash>[+uncommitted changes], <date>."

    Call it when the run starts (the code that ran is the code at that commit)."""
    when = when or datetime.date.today()
    return f"Made by `{command(argv)}` at commit {commit()}, {when.isoformat()}."


def last_written(path: str) -> str:
    """The short hash of the last commit that changed ``path`` (relative to the repository)."""
    return _git("log", "-1", "--format=%h", "--", path) or "unknown"
