"""Atomic writes give the final file the mode a plain open() would."""

import os
import stat

import pytest

from tf_bitpruning._files import write_atomic


def _mode(path):
    return stat.S_IMODE(os.stat(path).st_mode)


@pytest.mark.parametrize("umask", [0o022, 0o077, 0o002])
def test_new_file_respects_umask(tmp_path, umask):
    old = os.umask(umask)
    try:
        plain, atomic = tmp_path / "plain.bin", tmp_path / "atomic.bin"
        with open(plain, "wb") as f:
            f.write(b"x")
        write_atomic(atomic, b"x")
    finally:
        os.umask(old)
    assert _mode(atomic) == _mode(plain) == 0o666 & ~umask
    assert atomic.read_bytes() == b"x"


def test_replacing_keeps_the_existing_mode(tmp_path):
    path = tmp_path / "model.tflite"
    path.write_bytes(b"old")
    os.chmod(path, 0o640)
    write_atomic(path, b"new")
    assert _mode(path) == 0o640
    assert path.read_bytes() == b"new"


def test_failed_write_leaves_nothing_behind(tmp_path):
    path = tmp_path / "model.tflite"
    path.write_bytes(b"old")
    with pytest.raises(TypeError):
        write_atomic(path, "not bytes")
    assert path.read_bytes() == b"old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.tflite"]
