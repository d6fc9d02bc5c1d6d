"""Quiet TensorFlow in our command-line programs: they print their own progress and
results, not TensorFlow's C++ and absl INFO chatter.

TensorFlow reads ``TF_CPP_MIN_LOG_LEVEL`` once, when it loads, so it must be set
before the first ``import tensorflow``; and since TensorFlow 2.19 the lines it logs
while loading (oneDNN, CUDA, CPU features) ignore it. ``tf_bitpruning/__init__``
therefore calls :func:`import_tensorflow`: TensorFlow is imported with native stderr
muted when ``TF_CPP_MIN_LOG_LEVEL`` asks for quiet. ``python -m tf_bitpruning.export``
imports this package before the CLI's own module runs, so the CLI's default (quiet)
is set there too.

absl's ``--verbosity`` (``-v``) flag brings the logs back: ``--verbosity=0`` shows
everything (INFO), ``-1`` warnings and errors, ``-2`` errors. A
``TF_CPP_MIN_LOG_LEVEL`` already in the environment is left as the user set it.
"""

from __future__ import annotations

import contextlib
import os
import sys
from typing import Iterator, Optional, Sequence

CLI_MODULE = "tf_bitpruning.export"
# Without --verbosity: hide C++ INFO, WARNING and ERROR lines (failures still raise,
# with their message, in Python).
QUIET_CPP_LEVEL = "3"


def verbosity_from_argv(argv: Sequence[str]) -> Optional[int]:
    """The value of absl's ``--verbosity``/``-v`` in ``argv``, or None when absent
    (or not an integer: absl reports that itself when it parses the flags)."""
    value = None
    for i, arg in enumerate(argv):
        for name in ("--verbosity", "-v"):
            if arg == name and i + 1 < len(argv):
                value = argv[i + 1]
            elif arg.startswith(name + "="):
                value = arg[len(name) + 1:]
    try:
        return None if value is None else int(value)
    except ValueError:
        return None


def cpp_log_level(verbosity: Optional[int]) -> str:
    """``TF_CPP_MIN_LOG_LEVEL`` for an absl verbosity (None: quiet)."""
    if verbosity is None:
        return QUIET_CPP_LEVEL
    return str(min(max(-verbosity, 0), 3))  # 0 (INFO) -> "0", -1 (WARNING) -> "1", ...


def quiet_before_tensorflow(argv: Sequence[str]) -> None:
    """Sets ``TF_CPP_MIN_LOG_LEVEL`` from ``--verbosity`` in ``argv`` unless the user
    set it; does nothing once TensorFlow is loaded (too late to matter)."""
    if "TF_CPP_MIN_LOG_LEVEL" not in os.environ and "tensorflow" not in sys.modules:
        os.environ["TF_CPP_MIN_LOG_LEVEL"] = cpp_log_level(verbosity_from_argv(argv))


def _cli_arguments() -> Optional[Sequence[str]]:
    """The arguments after ``-m tf_bitpruning.export``, or None when the interpreter
    was not started that way."""
    argv = list(getattr(sys, "orig_argv", None) or [])
    for i, arg in enumerate(argv[:-1]):
        if arg == "-m":
            return argv[i + 2:] if argv[i + 1] == CLI_MODULE else None
    return None


@contextlib.contextmanager
def native_stderr_muted(enabled: bool = True) -> Iterator[None]:
    """Drops what native code (TensorFlow's C++) writes to file descriptor 2 inside
    the block, while Python's ``sys.stderr`` (warnings, tracebacks) still reaches the
    terminal. A no-op where stderr has no file descriptor (a notebook, a capture)."""
    try:
        fd = sys.stderr.fileno() if enabled else -1
    except (AttributeError, OSError, ValueError):
        fd = -1
    if fd != 2:
        yield
        return
    sys.stderr.flush()
    saved = os.dup(2)
    python_stderr = sys.stderr
    stream = os.fdopen(os.dup(saved), "w", buffering=1, encoding=getattr(python_stderr, "encoding", None),
                       errors="backslashreplace")
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, 2)
    os.close(devnull)
    sys.stderr = stream
    try:
        yield
    finally:
        stream.flush()
        os.dup2(saved, 2)
        os.close(saved)
        sys.stderr = python_stderr
        stream.close()


def _quiet_level() -> bool:
    """Whether ``TF_CPP_MIN_LOG_LEVEL`` asks to hide INFO lines (1 or more)."""
    try:
        return int(os.environ.get("TF_CPP_MIN_LOG_LEVEL", "0")) >= 1
    except ValueError:
        return False


def import_tensorflow() -> None:
    """Imports TensorFlow for the package, first: under ``python -m
    tf_bitpruning.export`` with the CLI's log level, and, whenever
    ``TF_CPP_MIN_LOG_LEVEL`` is 1 or more, without its load-time lines."""
    if "tensorflow" in sys.modules:
        return
    arguments = _cli_arguments()
    if arguments is not None:
        quiet_before_tensorflow(arguments)
    with native_stderr_muted(_quiet_level()):
        import tensorflow  # noqa: F401


def quiet_python_logs(verbosity: Optional[int]) -> None:
    """After flag parsing: without ``--verbosity``, absl's and TensorFlow's Python
    loggers show errors only (absl would otherwise switch to INFO)."""
    if verbosity is not None:
        return
    import tensorflow as tf
    from absl import logging

    logging.set_verbosity(logging.ERROR)
    tf.get_logger().setLevel("ERROR")
