"""MultiHeadAttention bit-pruned (issue 19): expanded into EinsumDense projections, an
AttentionEinsum for the scores and the context (int8 BATCH_MATMUL), an AttentionSoftmax on
TFLite's int8 softmax grid (tf_bitpruning/attention.py), under tf_keras and Keras 3.

The expansion computes what the attention computes; the bit-pruned attention trains, freezes
and exports full-integer without a representative dataset, and the file agrees with Keras
(top-1 on decided inputs, tests/support/tflite_checks.py).
"""

import keras as keras3
import numpy as np
import pytest
import tf_keras
from tensorflow.lite.tools import flatbuffer_utils

import tf_bitpruning as tfbp
from tf_bitpruning import attention_layers, flatten
from tf_bitpruning.export import export_tflite
from tf_bitpruning.keras3 import attention_layers as keras3_attention_layers
from tests.support.litert_run import output_step, run_file
from tests.support.tflite_checks import top1_agreement

pytest.importorskip("ai_edge_litert.interpreter")
KERASES = {"tf_keras": tf_keras, "keras3": keras3}
# The Keras 3 variant runs both paths (Keras 3, then its tf_keras twin on export); the tf_keras
# one (tfmot's clone: slower) is slow.
BOTH = [pytest.param("tf_keras", marks=pytest.mark.slow), "keras3"]
STEPS, WIDTH = 10, 8


def _sequences(n, steps=STEPS, width=WIDTH, seed=0):
    return np.random.default_rng(seed).normal(size=(n, steps, width)).astype(np.float32)


def _two_attentions(keras):
    """Self-attention ``mha(x, x)`` with dropout, then cross-attention ``mha(q, v, k)`` with its
    own value size and output width. key_dim 3: 1/sqrt(3) is not exact in float."""
    L = keras.layers
    x, v, k = keras.Input((STEPS, WIDTH)), keras.Input((7, 6)), keras.Input((7, 5))
    h = L.MultiHeadAttention(2, 3, dropout=0.1, name="self")(x, x)
    h = L.MultiHeadAttention(3, 3, value_dim=5, output_shape=6, name="cross")(h, v, k)
    return keras.Model([x, v, k], h)


def _float_softmax(monkeypatch):
    """The expansion's softmax without its output grid (to compare with Keras' float attention)."""
    import tensorflow as tf
    monkeypatch.setattr(attention_layers.AttentionSoftmax, "call", lambda self, x: tf.nn.softmax(x, -1))
    monkeypatch.setattr(keras3_attention_layers.AttentionSoftmax, "call",
                        lambda self, x: keras3.ops.softmax(x, -1))


@pytest.mark.parametrize("kname", KERASES)
def test_expansion_computes_what_the_attention_computes(kname, monkeypatch):
    model = _two_attentions(KERASES[kname])
    data = [_sequences(16, *shape, seed=i) for i, shape in enumerate([(STEPS, WIDTH), (7, 6), (7, 5)])]
    flat = flatten.flatten(model)
    assert [layer.name for layer in flat.layers if "." in layer.name] == [
        "self.key", "self.query", "self.scores", "self.softmax", "self.dropout", "self.value", "self.context",
        "self.output", "cross.key", "cross.query", "cross.scores", "cross.softmax", "cross.value",
        "cross.context", "cross.output"]
    reference = np.asarray(model(data))
    # On the softmax grid (step 1/256): probabilities a half step apart at most, the output a little.
    gridded = np.asarray(flat(data))
    assert 0 < np.abs(gridded - reference).max() < 0.05 * np.ptp(reference)
    softmax = flat.get_layer("self.softmax")
    probabilities = np.asarray(type(flat)(flat.inputs, softmax.output)(data))
    assert np.allclose(probabilities * 256, np.round(probabilities * 256), atol=1e-4)  # on the grid
    _float_softmax(monkeypatch)
    assert np.allclose(np.asarray(flat(data)), reference, atol=1e-5)  # the same attention, weights copied


@pytest.mark.parametrize("kname", KERASES)
@pytest.mark.parametrize("call, what", [
    (lambda L, x: L.MultiHeadAttention(2, 4, name="attention")(x, x, use_causal_mask=True), "use_causal_mask=True"),
    (lambda L, x: L.MultiHeadAttention(2, 4, name="attention")(x, x, return_attention_scores=True)[0],
     "return_attention_scores=True"),
    (lambda L, x: L.MultiHeadAttention(2, 4, name="attention")(*[L.Masking()(x)] * 2), "masked query"),
    (lambda L, x: L.MultiHeadAttention(2, 4, attention_axes=(1, 2), name="attention")(
        L.Reshape((STEPS, 2, 4))(x), L.Reshape((STEPS, 2, 4))(x)), "attention_axes"),
])
def test_unsupported_attention_is_refused_with_what_to_do(kname, call, what):
    keras = KERASES[kname]
    x = keras.Input((STEPS, WIDTH))
    model = keras.Model(x, call(keras.layers, x))
    with pytest.raises(ValueError, match=rf"'attention' \(MultiHeadAttention\).*{what}.*skip_layers"):
        tfbp.bitprune_model(model)


def _attention_classifier(keras):
    L = keras.layers
    inputs = keras.Input((STEPS, WIDTH))
    h = L.Dense(WIDTH, name="before")(inputs)
    h = L.MultiHeadAttention(2, 4, name="attention")(h, h)
    return keras.Model(inputs, L.Dense(4, name="logits")(L.Flatten()(h)))


def _frozen_after_a_step(keras, x, y):
    """The bit-pruned attention classifier after one training step on ``x[:32]``, frozen."""
    bp = tfbp.bitprune_model(_attention_classifier(keras), regularization=0.0, init_bits=5.0)
    bp.compile(keras.optimizers.Adam(1e-3), keras.losses.SparseCategoricalCrossentropy(from_logits=True),
               run_eagerly=True)  # a step: faster than tracing
    bp.train_on_batch(x[:32], y)
    return tfbp.freeze_bitlengths(bp)


@pytest.mark.parametrize("kname", BOTH)
def test_attention_kernels_scores_and_softmax_on_grids_the_file_reproduces(kname, tmp_path):
    keras = KERASES[kname]
    x = _sequences(256)
    frozen = _frozen_after_a_step(keras, x, np.random.default_rng(1).integers(0, 4, 32))
    names = set(tfbp.bitlengths(frozen))
    assert {f"attention.{p}/weights" for p in ("query", "key", "value", "output")} <= names, names
    assert {"attention.scores/activations", "attention.context/activations"} <= names, names
    softmax = {"layer": "attention.softmax", "tensors": "output on TFLite's int8 softmax grid (step 1/256)"}
    assert tfbp.precision_report(frozen)["calibrated"] == [softmax]
    path = tmp_path / "attention.tflite"
    info = export_tflite(frozen, path)  # no representative_dataset: every grid is learned or fixed
    assert info["calibrated"] == [dict(softmax, bits=8, source="fixed")]
    (query,) = [e for e in info["tensors"] if e["name"] == "attention.query/weights"]
    assert query["tflite_op"] == "FULLY_CONNECTED"
    got, it = run_file(path, x)
    ops = [op["op_name"] for op in it._get_ops_details()]
    assert ops.count("BATCH_MATMUL") == 2 and "SOFTMAX" in ops, ops  # scores and context, int8
    model_obj = flatbuffer_utils.read_model(str(path))
    sg = model_obj.subgraphs[0]
    (op,) = [op for op in sg.operators if flatbuffer_utils.opcode_to_name(model_obj, op.opcodeIndex) == "SOFTMAX"]
    out = sg.tensors[op.outputs[0]]
    assert out.type == 9 and list(out.quantization.scale) == [1 / 256] and list(out.quantization.zeroPoint) == [-128]
    # LiteRT's int8 softmax approximates exp (a code or two of 1/256 apart from Keras' rounded
    # softmax), which moves a context value across a midpoint of its 5-bit grid now and then:
    # the logits move by a few of their steps (4 seen). Top-1 where the margin exceeds 4 steps.
    a = top1_agreement(got, np.asarray(frozen(x, training=False)), output_step(path), tolerance=4.0)
    assert a.decided >= 20 and a.rate >= 0.99, a


@pytest.mark.slow
@pytest.mark.parametrize("kname", KERASES)
def test_bit_pruned_attention_saves_and_loads(kname, tmp_path):
    """Its pieces are registered layers: a frozen model reloads and computes the same outputs."""
    from tf_bitpruning.export import load_model

    keras = KERASES[kname]
    x = _sequences(64)
    frozen = _frozen_after_a_step(keras, x, np.zeros(32))
    path = tmp_path / ("model.keras" if kname == "keras3" else "model.h5")
    frozen.save(path)
    loaded = load_model(path)
    assert {layer.name for layer in loaded.layers} == {layer.name for layer in frozen.layers}
    np.testing.assert_allclose(np.asarray(loaded(x)), np.asarray(frozen(x)), atol=1e-6)


def test_softmax_grid_values_and_gradients_are_the_same_under_both_kerases():
    """The attention softmax on TFLite's 1/256 grid: the same values, and the same gradient
    (fake_quant's: straight through up to 255/256, zero above) under both Kerases."""
    import tensorflow as tf

    scores = np.array([[[8.0, 0.0, -1.0], [0.2, 0.1, 0.0], [9.0, -3.0, 1.0]]], np.float32)
    weights = tf.constant(np.random.default_rng(0).normal(size=scores.shape).astype(np.float32))
    results = []
    for layer in (attention_layers.AttentionSoftmax(), keras3_attention_layers.AttentionSoftmax()):
        x = tf.Variable(scores)
        with tf.GradientTape() as tape:
            y = layer(x)
            loss = tf.reduce_sum(weights * y)
        results.append((np.asarray(y), tape.gradient(loss, x).numpy()))
    (y2, g2), (y3, g3) = results
    np.testing.assert_array_equal(y2, y3)
    assert (y2 >= 255 / 256).any()  # the case that differed: a probability above the grid's top
    np.testing.assert_allclose(g2, g3, atol=1e-6)
