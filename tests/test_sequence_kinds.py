"""Layers beyond CNNs (issue 19): sequences and tables, under tf_keras and Keras 3.

Each fast test builds a tiny model with one new layer kind, bit-prunes it, trains a
step, freezes it, exports a full-integer ``.tflite`` and runs it in LiteRT: the file
must agree with Keras (top-1 on decided inputs, outputs within a grid step; see
tests/support/tflite_checks.py). The tables' claims (an Embedding's table at its
learned bits, an int8 GATHER) are checked in the file itself.
"""

import keras as keras3
import numpy as np
import pytest
import tf_keras
from tensorflow.lite.tools import flatbuffer_utils

import tf_bitpruning as tfbp
from tf_bitpruning import costs
from tf_bitpruning.export import ExportError, export_tflite
from tests.support.litert_run import output_step, run_file
from tests.support.tflite_checks import top1_agreement

pytest.importorskip("ai_edge_litert.interpreter")
KERASES = {"tf_keras": tf_keras, "keras3": keras3}
VOCAB, STEPS, WIDTH = 40, 10, 8


def _tokens(n, seed=0):
    return np.random.default_rng(seed).integers(0, VOCAB, (n, STEPS)).astype(np.int32)


def _sequences(n, seed=0):
    return np.random.default_rng(seed).normal(size=(n, STEPS, WIDTH)).astype(np.float32)


def _frozen(model, x, keras, steps=1, bits=5.0):
    """Bit-pruned at ``bits`` everywhere, ``steps`` Adam steps (ranges move), frozen."""
    y = np.random.default_rng(1).integers(0, 4, len(x))
    bp = tfbp.bitprune_model(model, regularization=0.0, init_bits=bits)
    bp.compile(keras.optimizers.Adam(1e-3), keras.losses.SparseCategoricalCrossentropy(from_logits=True),
               run_eagerly=True)  # a step or two: faster than tracing
    for i in range(steps):
        bp.train_on_batch(x[32 * i:32 * (i + 1)], y[32 * i:32 * (i + 1)])
    return tfbp.freeze_bitlengths(bp)


def _agrees(frozen, x, path, **export_args):
    """Exports ``frozen`` to ``path`` and runs it in LiteRT: (Agreement, ops, metadata)."""
    info = export_tflite(frozen, path, **export_args)
    got, it = run_file(path, x)
    ref = np.asarray(frozen(x, training=False))
    ops = [op["op_name"] for op in it._get_ops_details()]
    return top1_agreement(got, ref, output_step(path)), ops, info


def _assert_agrees(a, tolerance_rate=0.02):
    # One rounding at a grid midpoint may move an output by a step (tflite_checks): top-1 holds
    # on every decided input, and outputs further than a step apart are rare.
    assert a.decided >= 20, a  # enough decided inputs for the rate to mean something
    assert a.rate >= 0.99 and a.off_grid_rate <= tolerance_rate, a


def _classifier(keras, body, tokens=True):
    L = keras.layers
    inputs = keras.Input((STEPS,), dtype="int32") if tokens else keras.Input((STEPS, WIDTH))
    x = L.Embedding(VOCAB, WIDTH, name="embedding")(inputs) if tokens else inputs
    return keras.Model(inputs, L.Dense(4, name="logits")(body(L, x)))


@pytest.mark.parametrize("kname", KERASES)
def test_embedding_table_at_its_learned_bits_in_an_int8_gather(kname, tmp_path):
    keras = KERASES[kname]
    model = _classifier(keras, lambda L, x: L.GlobalAveragePooling1D()(x))
    x = _tokens(96)
    frozen = _frozen(model, x, keras, bits=3.0)
    (table,) = [t for t in costs.quantized_tensors(frozen) if t.layer == "embedding"]
    assert table.kind == "weights" and table.macs == 0  # a lookup, no multiply-accumulates
    assert not [t for t in costs.quantized_tensors(frozen) if t.wrapper.startswith("quantize_layer")], \
        "token ids are indices: no input quantizer"
    a, ops, info = _agrees(frozen, x, tmp_path / "embedding.tflite")
    _assert_agrees(a)
    model_obj = flatbuffer_utils.read_model(str(tmp_path / "embedding.tflite"))
    sg = model_obj.subgraphs[0]
    (gather,) = [op for op in sg.operators if flatbuffer_utils.opcode_to_name(model_obj, op.opcodeIndex) == "GATHER"]
    stored = sg.tensors[gather.inputs[0]]
    codes = np.frombuffer(model_obj.buffers[stored.buffer].data, np.int8)
    (entry,) = [e for e in info["tensors"] if e["name"] == "embedding/weights"]
    bits = int(table.quantizer.bitlength(table.variables).numpy())
    assert entry["bits"] == bits <= 4 and entry["tflite_op"] == "GATHER"
    assert entry["tflite_tensor"] == "embedding/embeddings"
    assert stored.type == 9 and len(stored.quantization.scale) == 1  # INT8, one scale per table
    assert len(np.unique(codes)) <= 2 ** bits - 1, np.unique(codes)  # the table's learned grid


@pytest.mark.parametrize("kname", KERASES)
def test_conv1d_and_global_max_pooling_1d_on_embeddings(kname, tmp_path):
    keras = KERASES[kname]
    model = _classifier(keras, lambda L, x: L.GlobalMaxPooling1D()(L.Conv1D(8, 3, activation="relu")(x)))
    x = _tokens(128)
    a, ops, _ = _agrees(_frozen(model, x, keras), x, tmp_path / "gmp.tflite")
    _assert_agrees(a)
    assert {"GATHER", "CONV_2D", "REDUCE_MAX"} <= set(ops), ops


@pytest.mark.parametrize("kname", KERASES)
def test_dense_on_3d_inputs_is_one_fully_connected(kname, tmp_path):
    keras = KERASES[kname]
    model = _classifier(keras, lambda L, x: L.GlobalAveragePooling1D()(L.Dense(8, activation="relu")(x)),
                        tokens=False)
    x = _sequences(128)
    a, ops, _ = _agrees(_frozen(model, x, keras), x, tmp_path / "dense3d.tflite")
    _assert_agrees(a)
    # The bias and relu fused into the FULLY_CONNECTED (Keras' tensordot left an ADD in float).
    assert ops.count("FULLY_CONNECTED") == 2 and "ADD" not in ops, ops
