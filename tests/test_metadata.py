"""The precision metadata of a ``.tflite`` file, without training: written into a
tiny converted model, read back, and every damaged file refused with
``PrecisionMetadataError``."""

import json

import pytest
import tensorflow as tf
import tf_keras as keras
from tensorflow.lite.tools import flatbuffer_utils

from tf_bitpruning.export import METADATA_NAME, PrecisionMetadataError, read_metadata, read_precision
from tf_bitpruning.export.metadata import get_metadata, precision_table, set_metadata
from tests.support.tflite_checks import fuzz_reader

# What export_tflite writes (see tf_bitpruning/export/metadata.py), for a Dense layer.
INFO = {"format": 1, "tool": "tf_bitpruning", "version": "0.0.test", "model": "tiny",
        "average_bits": {"all": 3.5, "weights": 3.0, "activations": 4.0},
        "layers": {"dense": {"weights": 3, "activations": 4}},
        "tensors": [{"name": "dense/weights", "layer": "dense", "kind": "weights", "bits": 3, "elements": 8,
                     "storage": "int4", "tflite_tensor": "sequential/dense/MatMul"},
                    {"name": "dense/activations", "layer": "dense", "kind": "activations", "bits": 4,
                     "elements": 2, "storage": "int8"}]}


@pytest.fixture(scope="module")
def plain_tflite(tmp_path_factory):
    """A converted 4 -> 2 Dense model without metadata (about 1 kB)."""
    keras.utils.set_random_seed(0)
    model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(2)])
    path = tmp_path_factory.mktemp("metadata") / "plain.tflite"
    path.write_bytes(tf.lite.TFLiteConverter.from_keras_model(model).convert())
    return path


def _with_metadata(source, path, payload: bytes):
    fb = flatbuffer_utils.read_model(str(source))
    set_metadata(fb, METADATA_NAME, payload)
    flatbuffer_utils.write_model(fb, str(path))
    return path


@pytest.fixture
def tagged(plain_tflite, tmp_path):
    return _with_metadata(plain_tflite, tmp_path / "tagged.tflite", json.dumps(INFO).encode())


def test_write_then_read(tagged):
    assert read_metadata(tagged) == INFO
    assert read_precision(tagged) == {"dense": {"weights": 3, "activations": 4}}
    table = precision_table(read_metadata(tagged))
    assert table.splitlines()[1].split() == ["dense", "3", "4", "8", "int4"]
    assert "average bits: 3.50 (weights 3.00, activations 4.00)" in table


def test_set_metadata_replaces_its_entry(tagged, tmp_path):
    fb = flatbuffer_utils.read_model(str(tagged))
    buffers = len(fb.buffers)
    set_metadata(fb, METADATA_NAME, b'{"layers": {}}')
    assert len(fb.buffers) == buffers  # replaced in place, not appended
    assert [e.name.decode() for e in fb.metadata].count(METADATA_NAME) == 1
    assert get_metadata(fb, METADATA_NAME) == b'{"layers": {}}'
    assert get_metadata(fb, "something.else") is None


def test_errors_name_the_problem(plain_tflite, tmp_path):
    junk = tmp_path / "junk.tflite"
    junk.write_bytes(b"this is not a flatbuffer at all")
    with pytest.raises(PrecisionMetadataError, match="not a TFLite model"):
        read_precision(junk)
    with pytest.raises(FileNotFoundError, match="No such file"):
        read_precision(tmp_path / "absent.tflite")
    with pytest.raises(PrecisionMetadataError, match=f"without '{METADATA_NAME}' metadata"):
        read_precision(plain_tflite)
    cases = [(b"{not json", "not valid JSON"), (b"\xff\xfe{}", "not valid JSON"),  # not UTF-8
             (b"[1, 2]", "expected a JSON object"), (b'{"tensors": []}', "no 'layers'"),
             (b'{"layers": {"d": 3}}', "'d' maps to int"),
             (b'{"layers": {"d": {"weights": "3"}}}', "'d/weights' has bits '3'")]
    for payload, message in cases:
        path = _with_metadata(plain_tflite, tmp_path / "bad.tflite", payload)
        with pytest.raises(PrecisionMetadataError, match=message):
            read_precision(path)


def test_entry_pointing_past_the_buffers(tagged, tmp_path):
    fb = flatbuffer_utils.read_model(str(tagged))
    next(e for e in fb.metadata if e.name.decode() == METADATA_NAME).buffer = len(fb.buffers) + 5
    path = tmp_path / "dangling.tflite"
    flatbuffer_utils.write_model(fb, str(path))
    with pytest.raises(PrecisionMetadataError, match="damaged TFLite model.*points at buffer"):
        read_precision(path)


def test_damaged_files_raise_only_precision_metadata_error(tagged, tmp_path):
    """1,500 truncations and byte flips (a third inside the metadata name and JSON,
    where a flip makes invalid UTF-8): each is read or refused with
    PrecisionMetadataError, never another exception."""
    data = tagged.read_bytes()
    raised, read = fuzz_reader(read_precision, PrecisionMetadataError, data, tmp_path, count=1500, seed=0,
                               hot=(METADATA_NAME.encode(), json.dumps(INFO).encode()))
    assert raised >= 500 and read >= 50, (raised, read)  # both outcomes are exercised
