"""INT4 packing modes of export_tflite (``int4="auto" | True | False``), the
pointwise-conv-as-FULLY_CONNECTED layout, and ``verify_int4`` without LiteRT."""

import os
import sys
import warnings

import numpy as np
import pytest
import tf_keras as keras

from tests.support.models import train_frozen
from tf_bitpruning.export import ExportError, export_tflite, read_metadata
from tf_bitpruning.export import int4 as int4_pass
from tf_bitpruning.export._compat import flatbuffer_utils, schema

L = keras.layers


def _no_litert(monkeypatch):
    """Makes ``from ai_edge_litert.interpreter import ...`` raise ImportError."""
    monkeypatch.setitem(sys.modules, "ai_edge_litert", None)
    monkeypatch.setitem(sys.modules, "ai_edge_litert.interpreter", None)


# -- fast: the mode logic ------------------------------------------------------------------------

def test_int4_modes_choose_the_ops():
    assert int4_pass.int4_ops_for("auto") == int4_pass.FAST_INT4_OPS == ("FULLY_CONNECTED",)
    assert int4_pass.int4_ops_for(True) == int4_pass.INT4_OPS
    assert int4_pass.int4_ops_for(np.bool_(True)) == int4_pass.INT4_OPS
    assert int4_pass.int4_ops_for(False) == ()
    assert int4_pass.int4_ops_for(False, ("CONV_2D",)) == ()
    # int4_ops (the pre-"auto" option) still chooses the ops, for either mode.
    assert int4_pass.int4_ops_for(True, ("CONV_2D",)) == ("CONV_2D",)
    assert int4_pass.int4_ops_for("auto", ["DEPTHWISE_CONV_2D"]) == ("DEPTHWISE_CONV_2D",)
    with pytest.raises(ValueError, match="'auto', True or False"):
        int4_pass.int4_ops_for("yes")
    with pytest.raises(ValueError, match="no filter to pack"):
        int4_pass.int4_ops_for(True, ("ADD",))


def test_pointwise_convs_pack_as_fully_connected():
    packed_as = int4_pass.packed_as
    assert packed_as("CONV_2D", True, ("FULLY_CONNECTED",)) == "FULLY_CONNECTED"
    assert packed_as("CONV_2D", False, ("FULLY_CONNECTED",)) is None
    assert packed_as("CONV_2D", True, int4_pass.INT4_OPS) == "FULLY_CONNECTED"
    assert packed_as("CONV_2D", True, ("CONV_2D",)) == "CONV_2D"  # int4_ops without FC: stays a conv
    assert packed_as("DEPTHWISE_CONV_2D", False, ("FULLY_CONNECTED",)) is None
    assert packed_as("FULLY_CONNECTED", False, ("FULLY_CONNECTED",)) == "FULLY_CONNECTED"


def test_verify_int4_says_when_litert_is_missing(monkeypatch):
    _no_litert(monkeypatch)
    assert int4_pass.litert_interpreter() is None
    with pytest.warns(UserWarning, match="not installed.*unverified"):
        assert int4_pass.verify_int4(b"", b"") is False
    with pytest.raises(ExportError, match="pip install ai-edge-litert"):
        int4_pass.verify_int4(b"", b"", required=True)


# -- slow: exported files ------------------------------------------------------------------------

def int4_cnn() -> keras.Model:
    """Every filter kind INT4 packing meets: a 3x3 conv, a depthwise conv, a pointwise
    conv with BN (folded, per-channel), a plain pointwise conv with a bias, a Dense
    with BN (per-channel: a pointwise CONV_2D) and a per-tensor Dense."""
    inputs = keras.Input((8, 8, 1))
    x = L.ReLU()(L.Conv2D(8, 3, padding="same", name="conv3x3")(inputs))
    x = L.DepthwiseConv2D(3, padding="same", use_bias=False, name="depthwise")(x)
    x = L.ReLU()(L.BatchNormalization(momentum=0.9)(x))
    x = L.ReLU()(L.BatchNormalization(momentum=0.9)(L.Conv2D(16, 1, use_bias=False, name="pointwise_bn")(x)))
    x = L.Conv2D(16, 1, activation="relu", name="pointwise")(x)
    x = L.Flatten()(L.MaxPooling2D()(x))
    x = L.ReLU()(L.BatchNormalization(momentum=0.9)(L.Dense(24, use_bias=False, name="dense_bn")(x)))
    return keras.Model(inputs, L.Dense(10, name="logits")(x))


# Kernel bits in quantized_tensors order: conv 3x3, depthwise, pointwise+BN, pointwise, dense+BN, dense.
WEIGHT_BITS = [3, 4, 4, 3, 4, 6]
ACTIVATION_BITS = [8, 6, 5, 8, 6, 5, 8]


@pytest.fixture(scope="module")
def int4_model(digits):
    keras.utils.set_random_seed(0)
    return train_frozen(int4_cnn(), digits, WEIGHT_BITS, ACTIVATION_BITS)


def _weights(info):
    return {e["layer"]: e for e in info["tensors"] if e["kind"] == "weights"}


def _tensor_types(path):
    fb = flatbuffer_utils.read_model(str(path))
    sg = fb.subgraphs[0]
    ops = {}
    for op in sg.operators:
        if len(op.inputs) > 1 and op.inputs[1] >= 0:
            ops[sg.tensors[op.inputs[1]].name.decode()] = (flatbuffer_utils.opcode_to_name(fb, op.opcodeIndex), op)
    return {t.name.decode(): t for t in sg.tensors}, ops


@pytest.fixture(scope="module")
def int4_files(int4_model, tmp_path_factory):
    out = tmp_path_factory.mktemp("int4_modes")
    files, infos = {}, {}
    for mode in ("auto", True, False):
        for fine_bias in (True, False):
            path = out / f"{mode}_{fine_bias}.tflite"
            infos[mode, fine_bias] = export_tflite(int4_model, path, int4=mode, fine_bias=fine_bias)
            files[mode, fine_bias] = path
    return files, infos


@pytest.mark.slow
def test_int4_modes_pack_what_they_say(int4_model, int4_files):
    files, infos = int4_files
    for fine_bias in (True, False):
        auto, every, none = (_weights(infos[m, fine_bias]) for m in ("auto", True, False))
        assert len(auto) == len(WEIGHT_BITS)
        for layer, entry in auto.items():
            low = entry["bits"] <= 4
            # auto: INT4 exactly for the fast ops; pointwise convs (and the per-channel Dense,
            # which TFLite gets as a pointwise conv) become FULLY_CONNECTED for it.
            fast = entry["tflite_op"] in int4_pass.FAST_INT4_OPS
            assert entry["storage"] == ("int4" if low and fast else "int8"), (layer, entry)
            assert every[layer]["storage"] == ("int4" if low else "int8"), (layer, every[layer])
            assert none[layer]["storage"] == "int8"
        ops = {layer: e["tflite_op"] for layer, e in auto.items()}
        assert ops == {"conv3x3": "CONV_2D", "depthwise": "DEPTHWISE_CONV_2D",
                       "pointwise_bn": "FULLY_CONNECTED", "pointwise": "FULLY_CONNECTED",
                       "dense_bn": "FULLY_CONNECTED", "logits": "FULLY_CONNECTED"}, ops
        assert none["pointwise_bn"]["tflite_op"] == "CONV_2D"  # int4=False: no rewrite
        assert sum(e["storage"] == "int4" for e in auto.values()) == 3
        assert sum(e["storage"] == "int4" for e in every.values()) == 5

    # The flatbuffer says the same as the metadata; a rewritten conv is a keep_num_dims FC.
    for key, path in files.items():
        tensors, ops = _tensor_types(path)
        for entry in _weights(infos[key]).values():
            t = tensors[entry["tflite_tensor"]]
            assert t.type == (schema.TensorType.INT4 if entry["storage"] == "int4" else schema.TensorType.INT8)
            op_name, op = ops[entry["tflite_tensor"]]
            assert op_name == entry["tflite_op"]
            if op_name == "FULLY_CONNECTED" and entry["layer"].startswith("pointwise"):
                assert op.builtinOptions.keepNumDims and len(t.shape) == 2
    sizes = {key: os.path.getsize(path) for key, path in files.items()}
    assert sizes[True, True] < sizes["auto", True] < sizes[False, True]


@pytest.mark.slow
def test_int4_modes_agree_in_litert(int4_files, digits):
    from tests.support.litert_run import output_step
    from tests.support.litert_run import run_file as run_tflite

    files, _ = int4_files
    x = digits[2]
    # Same codes (fine_bias=False: every int8 scale is the b-bit step in every mode): the
    # builtin kernels give identical outputs whatever the container or layout.
    ref, _ = run_tflite(files[False, False], x, builtin=True)
    for mode in ("auto", True):
        out, _ = run_tflite(files[mode, False], x, builtin=True)
        np.testing.assert_array_equal(out, ref)
    # With the default XNNPACK delegate the files run different kernels: INT8 convolutions
    # on XNNPACK, INT4 ones on the builtin kernels, which break rounding ties differently;
    # with fine_bias=True the bias grid of the INT4 layers also differs (codes <= 7 instead
    # of <= 127). One-step differences grow through the layers: measured up to 6 % of the
    # logit range with oneDNN on and 15 % with oneDNN off and one thread (trained weights
    # differ by machine). A wrong scale, zero point or layout moves the outputs by about the
    # whole range, so 30 % still tells a broken file from rounding. (Each file equals its own
    # INT8 reference exactly: verify_int4 ran at export.)
    for fine_bias in (True, False):
        base, _ = run_tflite(files[False, fine_bias], x)
        step = output_step(files[False, fine_bias])
        bound = 0.3 * (base.max() - base.min())
        for mode in ("auto", True):
            out, _ = run_tflite(files[mode, fine_bias], x)
            diff = np.abs(out - base)
            assert diff.max() <= bound, (mode, fine_bias, diff.max() / step)


@pytest.mark.slow
def test_export_without_litert_warns_or_refuses(int4_model, tmp_path, monkeypatch):
    _no_litert(monkeypatch)
    path = tmp_path / "m.tflite"
    with pytest.warns(UserWarning, match="unverified"):
        info = export_tflite(int4_model, path)  # verify_int4=None: verify where LiteRT exists
    assert any(e.get("storage") == "int4" for e in info["tensors"]) and path.exists()
    strict = tmp_path / "strict.tflite"
    with pytest.raises(ExportError, match="not installed"):
        export_tflite(int4_model, strict, verify_int4=True)
    assert not strict.exists()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        export_tflite(int4_model, tmp_path / "unchecked.tflite", verify_int4=False)
        export_tflite(int4_model, tmp_path / "int8.tflite", int4=False, verify_int4=True)  # nothing packed
    assert read_metadata(tmp_path / "unchecked.tflite")["layers"] == read_metadata(path)["layers"]


@pytest.mark.slow
def test_an_int4_file_that_computes_otherwise_is_refused(int4_model, tmp_path, monkeypatch):
    """verify_int4 compares the INT4 file with its INT8 twin in LiteRT: a packing that
    changes one filter code is an ExportError, and no file is left behind."""
    pytest.importorskip("ai_edge_litert.interpreter")
    real_pack = int4_pass.pack_int4_values

    def off_by_one(values):
        v = np.array(values, np.int8).reshape(-1)
        v[0] = 1 if v[0] != 1 else 2  # one code moved: another product in every output
        return real_pack(v)

    monkeypatch.setattr(int4_pass, "pack_int4_values", off_by_one)
    path = tmp_path / "wrong.tflite"
    with pytest.raises(ExportError, match="does not reproduce the INT8 model's outputs"):
        export_tflite(int4_model, path, int4=True, verify_int4=True)
    assert not path.exists()
    monkeypatch.undo()
    export_tflite(int4_model, path, int4=True, verify_int4=True)  # the real packing passes
    assert path.exists()
