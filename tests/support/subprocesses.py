"""Running the helper scripts of the tests (distribute_run.py, multiworker_run.py,
resume_run.py) in fresh interpreters, with timeouts."""

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
TIMEOUT_S = 600  # per process: a stuck one (e.g. a worker waiting for a dead peer) is killed


def start(script: str, *args, env_extra=None) -> subprocess.Popen:
    """Starts ``python -m tests.support.<script> args...`` in the repository (and the
    variables of ``env_extra`` set)."""
    env = dict(os.environ, **(env_extra or {}))
    env["TF_CPP_MIN_LOG_LEVEL"] = "2"
    module = "tests.support." + script[:-len(".py")] if script.endswith(".py") else script
    return subprocess.Popen([sys.executable, "-m", module, *map(str, args)], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=env, cwd=str(ROOT))


def finish(procs, timeout: float = TIMEOUT_S):
    """Waits for every process, killing all of them when one times out. Returns
    ``(returncode, the last stdout line as JSON or None, stderr)`` per process."""
    results = []
    try:
        for proc in procs:
            out, err = proc.communicate(timeout=timeout)
            lines = out.strip().splitlines()
            try:
                result = json.loads(lines[-1]) if lines else None
            except json.JSONDecodeError:
                result = None
            results.append((proc.returncode, result, err))
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
                proc.communicate()
    return results


def free_ports(n: int):
    """``n`` distinct free localhost ports (bound together, so never the same twice)."""
    sockets = [socket.socket() for _ in range(n)]
    try:
        for s in sockets:
            s.bind(("localhost", 0))
        return [s.getsockname()[1] for s in sockets]
    finally:
        for s in sockets:
            s.close()
