"""``python -m tf_bitpruning.export``: argument errors (fast, in process) and a quiet
run (a subprocess: TensorFlow's own log lines must not reach the terminal)."""

import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from absl import app, flags

from tf_bitpruning import _logs
from tf_bitpruning.export import __main__ as cli

ROOT = Path(__file__).resolve().parent.parent
# A C++ log line (absl/glog prefix: I0000 00:00:..., W..., E...) or a raw converter print.
NATIVE_LOG = re.compile(r"^[IWEF]\d{4} |absl::InitializeLog|fully_quantize:", re.MULTILINE)


@pytest.fixture
def parsed_flags():
    """absl flags parsed with defaults, as ``app.run`` would leave them."""
    flags.FLAGS.unparse_flags()
    flags.FLAGS(["export"])
    yield flags.FLAGS
    flags.FLAGS.unparse_flags()


def test_wrong_number_of_arguments(parsed_flags):
    for argv in (["export"], ["export", "model"], ["export", "a", "b", "c"]):
        with pytest.raises(app.UsageError, match="usage: python -m tf_bitpruning.export SAVED_MODEL OUT.tflite"):
            cli.main(argv)


def test_missing_saved_model(parsed_flags, tmp_path):
    with pytest.raises(app.UsageError, match="SAVED_MODEL: no such file or directory"):
        cli.main(["export", str(tmp_path / "nothing"), str(tmp_path / "out.tflite")])
    assert not (tmp_path / "out.tflite").exists()


def test_representative_data_files(tmp_path):
    x = np.arange(12, dtype=np.float32).reshape(3, 4)
    np.save(tmp_path / "x.npy", x)
    np.testing.assert_array_equal(cli._load_samples(str(tmp_path / "x.npy")), x)
    np.savez(tmp_path / "xy.npz", y=x[:, 0], x=x)
    np.testing.assert_array_equal(cli._load_samples(str(tmp_path / "xy.npz")), x)  # "x" by default
    np.testing.assert_array_equal(cli._load_samples(str(tmp_path / "xy.npz"), "y"), x[:, 0])
    with pytest.raises(app.UsageError, match="--representative_data: no such file"):
        cli._load_samples(str(tmp_path / "absent.npy"))
    with pytest.raises(app.UsageError, match=r"--npz_key: .* has no array 'z' \(it has \['y', 'x'\]\)"):
        cli._load_samples(str(tmp_path / "xy.npz"), "z")
    np.savez(tmp_path / "empty.npz")
    with pytest.raises(app.UsageError, match="holds no arrays"):
        cli._load_samples(str(tmp_path / "empty.npz"))


@pytest.mark.parametrize("argv, verbosity", [
    ([], None), (["--verbosity=0"], 0), (["--verbosity", "-1"], -1), (["-v=1"], 1), (["-v", "2"], 2),
    (["--verbosity=loud"], None), (["model", "out.tflite", "--int4=true"], None)])
def test_verbosity_from_argv(argv, verbosity):
    assert _logs.verbosity_from_argv(argv) == verbosity


def test_cpp_log_level():
    # Quiet by default; absl verbosity 0 (INFO) and above show every C++ line.
    assert [_logs.cpp_log_level(v) for v in (None, 1, 0, -1, -2, -3, -9)] == ["3", "0", "0", "1", "2", "3", "3"]


def test_native_stderr_is_muted_but_python_stderr_is_not():
    """In a child process: pytest replaces fd 2, which the mute leaves alone."""
    code = (
        "import importlib.util, os, sys\n"
        f"spec = importlib.util.spec_from_file_location('_logs', {str(ROOT / 'tf_bitpruning' / '_logs.py')!r})\n"
        "logs = importlib.util.module_from_spec(spec); spec.loader.exec_module(logs)\n"
        "with logs.native_stderr_muted():\n"
        "    os.write(2, b'native line\\n')\n"
        "    print('python line', file=sys.stderr)\n"
        "os.write(2, b'native after\\n')\n")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert proc.stderr.splitlines() == ["python line", "native after"]


def _cli(*args, env_extra=None):
    env = {k: v for k, v in os.environ.items() if k != "TF_CPP_MIN_LOG_LEVEL"}  # the CLI's own default
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(ROOT), env.get("PYTHONPATH")) if p)
    env.update(env_extra or {})
    return subprocess.run([sys.executable, "-m", "tf_bitpruning.export", *args], capture_output=True,
                          text=True, env=env, timeout=300, cwd=str(ROOT))


@pytest.mark.slow  # interpreters that load TensorFlow, a trained model
def test_cli_is_quiet_by_default(frozen_models, tmp_path):
    saved, out = tmp_path / "saved", tmp_path / "out.tflite"
    frozen_models["sequential"].save(saved)
    proc = _cli(str(saved), str(out))
    assert proc.returncode == 0, proc.stderr
    assert "conv2d" in proc.stdout and f"wrote {out}" in proc.stdout
    assert not NATIVE_LOG.search(proc.stderr), proc.stderr  # loading TF, the SavedModel, the converter
    failed = _cli(str(tmp_path / "nothing"), str(out))
    assert failed.returncode == 1 and "SAVED_MODEL: no such file or directory" in failed.stderr
    assert not NATIVE_LOG.search(failed.stderr), failed.stderr
    # --verbosity brings TensorFlow's lines back: the converter logs at INFO on every machine
    # (its MLIR passes, the quantizer), where the default run above printed none.
    loud = _cli(str(saved), str(tmp_path / "loud.tflite"), "--verbosity=0")
    assert loud.returncode == 0, loud.stderr
    assert NATIVE_LOG.search(loud.stderr), loud.stderr[-2000:]
