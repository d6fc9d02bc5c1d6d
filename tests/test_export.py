"""TFLite export of frozen bit-pruned models: b-bit grids in int8, INT4 packing,
precision metadata, CLI and error cases (digits; models shared per session)."""

import json
import os

import numpy as np
import pytest
import tensorflow as tf
import tf_keras as keras
from tensorflow.lite.python import schema_py_generated as schema
from tensorflow.lite.tools import flatbuffer_utils

import tf_bitpruning as tfbp
from tf_bitpruning import costs, quant_ops
from tf_bitpruning.export import (METADATA_NAME, ExportError, PrecisionMetadataError, export_tflite,
                                  precision_table, read_metadata, read_precision)
from tf_bitpruning.export import tflite as tflite_export

Interpreter = pytest.importorskip("ai_edge_litert.interpreter").Interpreter
OpResolverType = pytest.importorskip("ai_edge_litert.interpreter").OpResolverType

MODELS = ("sequential", "functional")


def run_tflite(path, x, builtin=False, preserve=False):
    """Runs a .tflite file on a batch; returns (outputs, interpreter)."""
    kwargs = {"experimental_preserve_all_tensors": preserve}
    if builtin:
        kwargs["experimental_op_resolver_type"] = OpResolverType.BUILTIN_WITHOUT_DEFAULT_DELEGATES
    it = Interpreter(model_path=str(path), **kwargs)
    inp, out = it.get_input_details()[0], it.get_output_details()[0]
    it.resize_tensor_input(inp["index"], x.shape)
    it.allocate_tensors()
    if inp["dtype"] != np.float32:
        scale, zero = inp["quantization"]
        x = np.clip(np.round(x / scale) + zero, -128, 127).astype(inp["dtype"])
    it.set_tensor(inp["index"], x)
    it.invoke()
    y = it.get_tensor(it.get_output_details()[0]["index"])
    if out["dtype"] != np.float32:
        scale, zero = out["quantization"]
        y = (y.astype(np.float32) - zero) * scale
    return y, it


def flatbuffer(path):
    return flatbuffer_utils.read_model(str(path))


@pytest.fixture(scope="module")
def exported(frozen_models, tmp_path_factory):
    """Each model exported once with INT8 filters and once with INT4 packing."""
    out = tmp_path_factory.mktemp("export")
    files = {}
    for name, model in frozen_models.items():
        files[name, "int8"] = out / f"{name}_int8.tflite"
        files[name, "int4"] = out / f"{name}_int4.tflite"
        export_tflite(model, files[name, "int8"], int4=False)
        export_tflite(model, files[name, "int4"])
    return files


@pytest.mark.parametrize("name", MODELS)
def test_tflite_agrees_with_keras(name, frozen_models, exported, digits):
    model = frozen_models[name]
    x = digits[2]
    ref = model.predict(x, verbose=0)
    for builtin in (False, True):  # XNNPACK (default) and the builtin kernels
        got, _ = run_tflite(exported[name, "int8"], x, builtin=builtin)
        agreement = float(np.mean(got.argmax(1) == ref.argmax(1)))
        assert agreement >= 0.995, (name, builtin, agreement)
    # Outputs differ only where a value sits within rounding noise of a grid
    # midpoint: at most a few output steps (softmax: 1/256 plus such flips).
    max_diff = float(np.abs(got - ref).max())
    assert max_diff < (0.2 if name == "sequential" else 2.0), max_diff


@pytest.mark.parametrize("name", MODELS)
def test_full_integer_on_the_b_bit_grids(name, frozen_models, exported, digits):
    model = frozen_models[name]
    fb = flatbuffer(exported[name, "int8"])
    sg = fb.subgraphs[0]
    ops = [flatbuffer_utils.opcode_to_name(fb, op.opcodeIndex) for op in sg.operators]
    assert ops[0] == "QUANTIZE" and ops[-1] == "DEQUANTIZE"
    for op, op_name in zip(sg.operators, ops):
        if op_name not in ("QUANTIZE", "DEQUANTIZE"):
            types = {sg.tensors[i].type for i in list(op.inputs) + list(op.outputs) if i >= 0}
            assert types <= {schema.TensorType.INT8, schema.TensorType.INT32}, (op_name, types)

    # Weights: at most 2^b - 1 int8 values, all within ±(2^(b-1) - 1).
    info = read_metadata(exported[name, "int8"])
    tensors = {t.name: sg.tensors[i] for i, t in enumerate(sg.tensors)}
    checked = 0
    for entry in info["tensors"]:
        if entry["kind"] != "weights":
            continue
        t = tensors[entry["tflite_tensor"].encode()]
        values = np.frombuffer(bytes(fb.buffers[t.buffer].data), np.int8)
        b, multiplier = entry["bits"], entry["code_multiplier"]
        assert values.size == entry["elements"]
        assert len(np.unique(values)) <= 2 ** b - 1
        assert np.all(values.astype(int) % multiplier == 0)  # b-bit integer × 2^j
        assert np.abs(values.astype(int) // multiplier).max() <= 2 ** (b - 1) - 1
        checked += 1
    assert checked == sum(1 for t in costs.quantized_tensors(model) if t.kind == "weights")

    # Activations: every int8 tensor whose scale is a learned b-bit step holds
    # at most 2^b values, ending at 127 (the learned max).
    _, it = run_tflite(exported[name, "int8"], digits[2][:100], builtin=True, preserve=True)
    grids = []
    for t in costs.quantized_tensors(model):
        if t.kind == "activations":
            b = int(round(float(t.bits())))
            _, step, _ = quant_ops.activation_grid(t.variables["min"], t.variables["max"], float(b))
            grids.append((float(step), b))
    seen = 0
    for d in it.get_tensor_details():
        scale = d["quantization"][0]
        if d["dtype"] != np.int8 or not scale or len(d["shape"]) < 2:
            continue
        match = [b for step, b in grids if np.isclose(scale, step, rtol=1e-5)]
        if match:
            values = it.get_tensor(d["index"])
            assert len(np.unique(values)) <= 2 ** match[0], d["name"]
            assert values.min() >= 127 - (2 ** match[0] - 1), d["name"]
            seen += 1
    assert seen >= len(grids) - 1  # the output's grid may only exist before softmax


@pytest.mark.parametrize("name", MODELS)
def test_int4_filters_are_packed_and_run_identically(name, exported, digits, tmp_path):
    path4 = exported[name, "int4"]
    unpacked = tmp_path / "unpacked.tflite"
    assert tflite_export.unpack_int4(path4, unpacked) > 0
    fb4, fb8 = flatbuffer(path4), flatbuffer(unpacked)
    info = read_metadata(path4)
    sg4 = fb4.subgraphs[0]
    packed_ops = set()
    for entry in (e for e in info["tensors"] if e["kind"] == "weights"):
        index = [t.name for t in sg4.tensors].index(entry["tflite_tensor"].encode())
        t4, t8 = sg4.tensors[index], fb8.subgraphs[0].tensors[index]
        if entry["bits"] <= 4:  # 2- and 3-bit filters too: LiteRT refuses INT2
            assert entry["storage"] == "int4" and t4.type == schema.TensorType.INT4
            data = np.asarray(fb4.buffers[t4.buffer].data, np.uint8)
            assert data.size == (entry["elements"] + 1) // 2
            values = np.frombuffer(bytes(fb8.buffers[t8.buffer].data), np.int8)
            np.testing.assert_array_equal(tflite_export.unpack_int4_values(data, values.size), values)
            assert len(np.unique(values)) <= 2 ** entry["bits"] - 1 and np.abs(values.astype(int)).max() <= 7
            packed_ops.update(flatbuffer_utils.opcode_to_name(fb4, op.opcodeIndex) for op in sg4.operators
                              if len(op.inputs) > 1 and op.inputs[1] == index)
        else:
            assert entry["storage"] == "int8" and t4.type == schema.TensorType.INT8
    expected = {"sequential": {"CONV_2D", "FULLY_CONNECTED"},
                "functional": {"CONV_2D", "DEPTHWISE_CONV_2D"}}[name]
    assert packed_ops == expected
    assert os.path.getsize(path4) < os.path.getsize(unpacked)

    # LiteRT runs the INT4 file; with its builtin kernels exactly like the INT8 one.
    x = digits[2]
    out4, _ = run_tflite(path4, x, builtin=True)
    out8, _ = run_tflite(unpacked, x, builtin=True)
    np.testing.assert_array_equal(out4, out8)
    # The default XNNPACK delegate leaves INT4 convolutions to the builtin kernel
    # (which rounds some midpoints differently than XNNPACK): same top-1.
    default4, _ = run_tflite(path4, x)
    assert np.mean(default4.argmax(1) == out8.argmax(1)) >= 0.995


def test_int4_pack_roundtrip_and_range():
    values = np.array([-8, -7, -1, 0, 1, 7, 3], np.int8)
    packed = tflite_export.pack_int4_values(values)
    assert packed.tolist()[0] == (0x8 | (0x9 << 4))  # first value in the low nibble
    np.testing.assert_array_equal(tflite_export.unpack_int4_values(packed, 7), values)
    with pytest.raises(ValueError, match="INT4"):
        tflite_export.pack_int4_values(np.array([9], np.int8))


@pytest.mark.parametrize("name", MODELS)
def test_metadata_matches_bitlengths(name, frozen_models, exported):
    model = frozen_models[name]
    learned = tfbp.bitlengths(model)
    for kind in ("int8", "int4"):
        precision = read_precision(exported[name, kind])
        flat = {f"{layer}/{key}": bits for layer, entry in precision.items() for key, bits in entry.items()}
        assert flat == learned
        assert all(isinstance(b, int) for b in flat.values())
    info = read_metadata(exported[name, "int4"])
    assert info["version"] == tfbp.__version__ and info["tool"] == "tf_bitpruning"
    assert {t["name"]: t["elements"] for t in info["tensors"]} == {
        t.name: t.elements for t in costs.quantized_tensors(model)}
    assert info["average_bits"]["all"] == pytest.approx(tfbp.average_bits(model), abs=1e-3)
    fb = flatbuffer(exported[name, "int4"])
    assert [e.name.decode() for e in fb.metadata].count(METADATA_NAME) == 1
    table = precision_table(info)
    assert all(layer in table for layer in precision)


def test_int8_input_and_output(frozen_models, digits, tmp_path):
    model = frozen_models["functional"]
    path = tmp_path / "int8_io.tflite"
    export_tflite(model, path, inference_input_type=tf.int8, inference_output_type=tf.int8)
    got, it = run_tflite(path, digits[2])
    assert it.get_input_details()[0]["dtype"] == np.int8
    ref = model.predict(digits[2], verbose=0)
    assert np.mean(got.argmax(1) == ref.argmax(1)) >= 0.995


def test_float_layers_need_a_representative_dataset(digits, tmp_path):
    from conftest import small_cnn

    bp = tfbp.bitprune_model(small_cnn(), skip_layers=["dense"])
    bp.compile(keras.optimizers.Adam(1e-3), "sparse_categorical_crossentropy")
    bp.fit(digits[0], digits[1], epochs=2, batch_size=64, verbose=0)
    frozen = tfbp.freeze_bitlengths(bp)
    path = tmp_path / "calibrated.tflite"
    with pytest.raises(ExportError, match="representative_dataset"):
        export_tflite(frozen, path)
    assert not path.exists()
    export_tflite(frozen, path, representative_dataset=digits[0][:64])
    got, _ = run_tflite(path, digits[2])
    ref = frozen.predict(digits[2], verbose=0)
    # The float dense layer is now int8 at calibrated ranges: close, not exact.
    assert np.mean(got.argmax(1) == ref.argmax(1)) >= 0.95


def test_refuses_models_that_are_not_frozen(digits, tmp_path):
    from conftest import small_cnn

    bp = tfbp.bitprune_model(small_cnn())
    with pytest.raises(ValueError, match="freeze_bitlengths"):
        export_tflite(bp, tmp_path / "m.tflite")
    with pytest.raises(ValueError, match="bitprune_model"):
        export_tflite(small_cnn(), tmp_path / "m.tflite")
    assert os.listdir(tmp_path) == []


def test_failed_export_leaves_no_file(frozen_models, tmp_path, monkeypatch):
    model = frozen_models["sequential"]
    fresh = tmp_path / "new.tflite"
    old = tmp_path / "old.tflite"
    old.write_bytes(b"previous export")

    def fail(*args, **kwargs):
        raise ExportError("simulated failure")

    monkeypatch.setattr(tflite_export, "check_full_integer", fail)
    for path in (fresh, old):
        with pytest.raises(ExportError, match="simulated"):
            export_tflite(model, path)
    monkeypatch.undo()

    def fail_replace(src, dst):
        raise OSError("disk full")

    monkeypatch.setattr(tflite_export.os, "replace", fail_replace)
    with pytest.raises(OSError, match="disk full"):
        export_tflite(model, fresh)
    monkeypatch.undo()
    assert sorted(os.listdir(tmp_path)) == ["old.tflite"]  # no partial or temporary file
    assert old.read_bytes() == b"previous export"
    with pytest.raises(FileNotFoundError, match="does not exist"):
        export_tflite(model, tmp_path / "missing_dir" / "m.tflite")


def test_read_precision_errors(tmp_path):
    junk = tmp_path / "model.tflite"
    junk.write_bytes(b"this is not a flatbuffer at all")
    with pytest.raises(PrecisionMetadataError, match="not a TFLite model"):
        read_precision(junk)
    with pytest.raises(FileNotFoundError):
        read_precision(tmp_path / "absent.tflite")

    plain = keras.Sequential([keras.Input((4,)), keras.layers.Dense(2)])
    converter = tf.lite.TFLiteConverter.from_keras_model(plain)
    path = tmp_path / "plain.tflite"
    path.write_bytes(converter.convert())
    with pytest.raises(PrecisionMetadataError, match="without 'tf_bitpruning.precision' metadata"):
        read_precision(path)

    fb = flatbuffer(path)
    from tf_bitpruning.export.metadata import set_metadata
    set_metadata(fb, METADATA_NAME, b"{not json")
    flatbuffer_utils.write_model(fb, str(path))
    with pytest.raises(PrecisionMetadataError, match="not valid JSON"):
        read_metadata(path)
    set_metadata(fb, METADATA_NAME, json.dumps({"layers": {"d": {"weights": 3}}}).encode())
    flatbuffer_utils.write_model(fb, str(path))
    assert read_precision(path) == {"d": {"weights": 3}}
    assert [e.name.decode() for e in flatbuffer(path).metadata].count(METADATA_NAME) == 1


def test_cli_exports_a_saved_model(frozen_models, digits, tmp_path, capsys):
    from absl import flags

    from tf_bitpruning.export import __main__ as cli

    model = frozen_models["sequential"]
    saved = tmp_path / "saved"
    model.save(saved)
    data = tmp_path / "data.npz"
    np.savez(data, x=digits[0][:32], y=digits[1][:32])
    out = tmp_path / "cli.tflite"
    flags.FLAGS.unparse_flags()
    flags.FLAGS(["export", f"--representative_data={data}"])
    try:
        assert cli.main(["export", str(saved), str(out)]) == 0
    finally:
        flags.FLAGS.unparse_flags()
    printed = capsys.readouterr().out
    assert "conv2d" in printed and "int4" in printed and "wrote" in printed
    assert read_precision(out)["conv2d"] == {"weights": 2, "activations": 4}
    with pytest.raises(Exception, match="no such file"):
        cli.main(["export", str(tmp_path / "nothing"), str(out)])
