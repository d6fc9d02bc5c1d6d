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
# Keras 3 models export through their tf_keras twin (keras3/bridge.py), so the fast tier runs
# the Keras 3 variant (both paths, ~2 s); the tf_keras one (tfmot's clone: slower) is slow.
BOTH = [pytest.param("tf_keras", marks=pytest.mark.slow), "keras3"]
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


@pytest.mark.parametrize("kname", BOTH)
def test_embedding_table_at_its_learned_bits_in_an_int8_gather(kname, tmp_path):
    keras = KERASES[kname]
    model = _classifier(keras, lambda L, x: L.GlobalAveragePooling1D()(x))
    x = _tokens(96)
    frozen = _frozen(model, x, keras, bits=3.0)
    (table,) = [t for t in costs.quantized_tensors(frozen) if t.layer == "embedding"]
    assert table.kind == "weights" and table.macs == 0  # a lookup, no multiply-accumulates
    assert not [t for t in costs.quantized_tensors(frozen) if t.wrapper.startswith("quantize_layer")], \
        "token ids are indices: no input quantizer"
    assert tfbp.precision_report(frozen)["calibrated"] == []  # every tensor on a learned grid
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


@pytest.mark.parametrize("kname", BOTH)
def test_conv1d_and_global_max_pooling_1d_on_embeddings(kname, tmp_path):
    keras = KERASES[kname]
    model = _classifier(keras, lambda L, x: L.GlobalMaxPooling1D()(L.Conv1D(8, 3, activation="relu")(x)))
    x = _tokens(128)
    a, ops, _ = _agrees(_frozen(model, x, keras), x, tmp_path / "gmp.tflite")
    _assert_agrees(a)
    assert {"GATHER", "CONV_2D", "REDUCE_MAX"} <= set(ops), ops


@pytest.mark.parametrize("kname", BOTH)
def test_dense_on_3d_inputs_is_one_fully_connected(kname, tmp_path):
    keras = KERASES[kname]
    model = _classifier(keras, lambda L, x: L.GlobalAveragePooling1D()(L.Dense(8, activation="relu")(x)),
                        tokens=False)
    x = _sequences(128)
    a, ops, _ = _agrees(_frozen(model, x, keras), x, tmp_path / "dense3d.tflite")
    _assert_agrees(a)
    # The bias and relu fused into the FULLY_CONNECTED (Keras' tensordot left an ADD in float).
    assert ops.count("FULLY_CONNECTED") == 2 and "ADD" not in ops, ops


def _sentiment(n, seed):
    """Token sequences labelled by which of two word groups occurs more often (a tie: 0)."""
    x = _tokens(n, seed)
    positive, negative = np.isin(x, range(1, 9)).sum(1), np.isin(x, range(9, 17)).sum(1)
    return x, (positive > negative).astype(np.int32)


@pytest.mark.slow
@pytest.mark.parametrize("kname", BOTH)
def test_text_classifier_end_to_end(kname, tmp_path):
    """Embedding -> Conv1D -> GlobalAveragePooling1D -> Dense, trained under a 4-bit
    budget, frozen, fine-tuned and exported: the file agrees with Keras and keeps its accuracy."""
    keras = KERASES[kname]
    L = keras.layers
    (x, y), (xt, yt) = _sentiment(3072, 0), _sentiment(1024, 1)
    inputs = keras.Input((STEPS,), dtype="int32")
    h = L.Embedding(VOCAB, 16, name="embedding")(inputs)
    h = L.GlobalAveragePooling1D()(L.Conv1D(16, 3, activation="relu")(h))
    model = keras.Model(inputs, L.Dense(2)(h))
    loss = keras.losses.SparseCategoricalCrossentropy(from_logits=True)
    model.compile(keras.optimizers.Adam(3e-3), loss, metrics=["accuracy"])
    model.fit(x, y, epochs=6, batch_size=64, verbose=0)
    float_accuracy = model.evaluate(xt, yt, verbose=0)[1]
    bp = tfbp.bitprune_model(model)
    bp.compile(keras.optimizers.Adam(1e-3), loss, metrics=["accuracy"])
    bp.fit(x, y, epochs=4, batch_size=64, verbose=0, callbacks=[tfbp.BitBudget(4.0)])
    frozen = tfbp.freeze_bitlengths(bp)
    frozen.compile(keras.optimizers.Adam(5e-4), loss, metrics=["accuracy"])
    frozen.fit(x, y, epochs=2, batch_size=64, verbose=0)
    assert tfbp.average_bits(frozen) <= 5.0, tfbp.bitlengths(frozen)  # the budget held (4 bits, ±1)
    a, ops, _ = _agrees(frozen, xt, tmp_path / "text.tflite")
    got, _ = run_file(tmp_path / "text.tflite", xt)
    assert a.decided >= 500 and a.rate >= 0.99, a
    deployed = float(np.mean(got.argmax(1) == yt))
    print(f"{kname}: float {float_accuracy:.4f}, deployed {deployed:.4f}, bits {tfbp.average_bits(frozen):.2f}, {a}")
    # A learnable task (float accuracy ~0.9): the 4-bit file stays within 3 points of float.
    assert float_accuracy >= 0.8 and deployed >= float_accuracy - 0.03, (float_accuracy, deployed)


@pytest.mark.parametrize("kname", BOTH)
def test_layer_normalization_statistics_calibrated_output_on_its_grid(kname, tmp_path):
    keras = KERASES[kname]
    model = _classifier(keras, lambda L, x: L.Flatten()(  # logits of many features: spread out
        L.LayerNormalization(name="norm")(L.Dense(16)(x))), tokens=False)
    x = _sequences(128)
    frozen = _frozen(model, x, keras)
    assert "norm/activations" in tfbp.bitlengths(frozen)  # its output has a learned grid
    assert tfbp.precision_report(frozen)["calibrated"] == [{"layer": "norm", "tensors": "statistics"}]
    with pytest.raises(ExportError, match=r"'norm' \(statistics\).*representative_dataset"):
        export_tflite(frozen, tmp_path / "refused.tflite")
    assert not (tmp_path / "refused.tflite").exists()
    info = export_tflite(frozen, tmp_path / "norm.tflite", representative_dataset=x[:64])
    assert info["calibrated"] == [{"layer": "norm", "tensors": "statistics", "bits": 8,
                                   "source": "representative_dataset"}]
    got, it = run_file(tmp_path / "norm.tflite", x)
    ops = [op["op_name"] for op in it._get_ops_details()]
    assert {"MEAN", "SQUARED_DIFFERENCE", "RSQRT"} <= set(ops), ops  # int8 statistics
    # The statistics (mean, variance, 1/sqrt) are int8 at calibrated scales where Keras
    # computes them in float: the normalized values move by up to about a step of the
    # norm's 5-bit grid, and the logits by a few of theirs. Top-1 holds where the
    # reference margin exceeds what 4 steps can move.
    a = top1_agreement(got, np.asarray(frozen(x, training=False)), output_step(tmp_path / "norm.tflite"),
                       tolerance=4.0)
    assert a.decided >= 20 and a.rate >= 0.99, a


@pytest.mark.parametrize("kname", BOTH)
@pytest.mark.parametrize("equation, output_shape, bias_axes", [
    ("abc,cd->abd", (STEPS, 8), "d"), ("abc,cde->abde", (STEPS, 2, 4), "de")])
def test_einsum_dense_kernel_at_its_learned_bits(kname, equation, output_shape, bias_axes, tmp_path):
    keras = KERASES[kname]

    def body(L, x):
        x = L.EinsumDense(equation, output_shape=output_shape, bias_axes=bias_axes, activation="relu",
                          name="einsum")(x)
        return L.GlobalAveragePooling1D()(L.Reshape((STEPS, 8))(x))

    x = _sequences(128)
    frozen = _frozen(_classifier(keras, body, tokens=False), x, keras)
    assert {"einsum/weights", "einsum/activations"} <= set(tfbp.bitlengths(frozen))
    a, ops, info = _agrees(frozen, x, tmp_path / "einsum.tflite")
    _assert_agrees(a)
    (entry,) = [e for e in info["tensors"] if e["name"] == "einsum/weights"]
    assert entry["tflite_op"] == "FULLY_CONNECTED" and "ADD" not in ops, ops  # bias and relu fused


def test_einsum_contraction_recognizes_dense_over_rows():
    from tf_bitpruning.export.rows import einsum_contraction

    assert einsum_contraction("abc,cd->abd") == 1
    assert einsum_contraction("abc,cde->abde") == 1
    assert einsum_contraction("abcd,cde->abe") == 2  # attention's output projection
    assert einsum_contraction("ab,bc->ac") == 1
    for other in ("abc,dc->abd", "abc,cd->adb", "abc,cd->abcd", "...b,bc->...c", "abc->ab"):
        assert einsum_contraction(other) is None, other


def _attention(L, x):
    return L.GlobalAveragePooling1D()(L.MultiHeadAttention(2, 4, name="attention")(x, x))


@pytest.mark.parametrize("kname", ["keras3", "tf_keras"])
def test_attention_is_expanded_or_left_whole_with_skip_layers(kname):
    """bitprune_model expands a MultiHeadAttention into bit-pruned layers (tests/test_attention.py);
    skip_layers=[its name] keeps it whole, in float."""
    keras = KERASES[kname]
    expanded = tfbp.bitlengths(tfbp.bitprune_model(_classifier(keras, _attention, tokens=False)))
    assert {"attention.query/weights", "attention.scores/activations"} <= set(expanded), expanded
    kept = tfbp.bitprune_model(_classifier(keras, _attention, tokens=False), skip_layers=["attention"])
    assert type(kept.get_layer("attention")).__name__ == "MultiHeadAttention"
    assert not [name for name in tfbp.bitlengths(kept) if name.startswith("attention")]


@pytest.mark.slow  # (two exports through a float attention: ~10 s)
@pytest.mark.parametrize("kname", KERASES)
def test_attention_left_in_float_is_calibrated_full_integer(kname, tmp_path):
    keras = KERASES[kname]
    x = _sequences(256)
    model = _classifier(keras, lambda L, h: L.Flatten()(_attention_block(L, h)), tokens=False)
    bp = tfbp.bitprune_model(model, regularization=0.0, init_bits=5.0, skip_layers=["attention"])
    bp.compile(keras.optimizers.Adam(1e-3), keras.losses.SparseCategoricalCrossentropy(from_logits=True),
               run_eagerly=True)
    bp.train_on_batch(x[:32], np.zeros(32))
    frozen = tfbp.freeze_bitlengths(bp)
    assert tfbp.precision_report(frozen)["calibrated"] == [{"layer": "attention", "tensors": "all"}]
    with pytest.raises(ExportError, match="representative_dataset"):
        export_tflite(frozen, tmp_path / "refused.tflite")  # float attention: no ranges
    _, ops, info = _agrees(frozen, x, tmp_path / "attention.tflite", representative_dataset=x[:64])
    assert {"layer": "attention", "tensors": "all", "bits": 8, "source": "representative_dataset"} \
        in info["calibrated"]
    assert "SOFTMAX" in ops and "BATCH_MATMUL" in ops, ops  # int8 attention (full-integer: export checks)
    # The attention runs int8 at calibrated scales where Keras runs it in float: its outputs
    # move by up to a step of the next learned grid, the logits by a few of theirs (2 seen).
    a = top1_agreement(run_file(tmp_path / "attention.tflite", x)[0], np.asarray(frozen(x, training=False)),
                       output_step(tmp_path / "attention.tflite"), tolerance=3.0)
    assert a.decided >= 20 and a.rate >= 0.99, a


def _attention_block(L, x):
    """Dense -> attention (in float) -> Dense: the float layer between two learned grids."""
    x = L.Dense(WIDTH, name="before")(x)
    return L.Dense(WIDTH, name="after")(L.MultiHeadAttention(2, 4, name="attention")(x, x))


def _recurrent_frozen(keras, kind, unroll, x, steps=1):
    """Dense -> LSTM/GRU -> logits, bit-pruned, ``steps`` trained, frozen."""
    model = _classifier(keras, lambda L, h: getattr(L, kind)(8, unroll=unroll, name="recurrent")(
        L.Dense(WIDTH, name="before")(h)), tokens=False)
    bp = tfbp.bitprune_model(model, regularization=0.0, init_bits=5.0)
    bp.compile(keras.optimizers.Adam(1e-3), keras.losses.SparseCategoricalCrossentropy(from_logits=True),
               run_eagerly=True)
    for i in range(steps):
        bp.train_on_batch(x[32 * i:32 * (i + 1)], np.zeros(32))
    return tfbp.freeze_bitlengths(bp)


@pytest.mark.filterwarnings("ignore:freeze_bitlengths")  # (no training step: ranges never calibrated)
@pytest.mark.parametrize("kname", BOTH)
def test_recurrent_loop_is_refused_with_what_to_do(kname, tmp_path):
    x = _sequences(64)
    frozen = _recurrent_frozen(KERASES[kname], "GRU", False, x, steps=0)  # refused before any range is read
    with pytest.raises(ExportError, match=r"'recurrent' run a loop.*unroll=True"):
        export_tflite(frozen, tmp_path / "looped.tflite", representative_dataset=x)
    assert not (tmp_path / "looped.tflite").exists()


@pytest.mark.slow
@pytest.mark.parametrize("kname", KERASES)
@pytest.mark.parametrize("kind", ["LSTM", "GRU"])
def test_recurrent_kernels_at_their_learned_bits_states_calibrated(kname, kind, tmp_path):
    x = _sequences(256)
    frozen = _recurrent_frozen(KERASES[kname], kind, True, x)
    assert {"recurrent/kernel", "recurrent/recurrent_kernel", "recurrent/activations"} <= set(tfbp.bitlengths(frozen))
    with pytest.raises(ExportError, match=r"'recurrent' \(gates and states\).*representative_dataset"):
        export_tflite(frozen, tmp_path / "refused.tflite")
    _, ops, info = _agrees(frozen, x, tmp_path / "recurrent.tflite", representative_dataset=x[:128])
    assert info["calibrated"] == [{"layer": "recurrent", "tensors": "gates and states", "bits": 8,
                                   "source": "representative_dataset"}]
    assert tfbp.precision_report(frozen)["calibrated"] == [{"layer": "recurrent", "tensors": "gates and states"}]
    # Gates and states int8 at calibrated scales (Keras: float): a few steps of the logits (3 seen).
    a = top1_agreement(run_file(tmp_path / "recurrent.tflite", x)[0], np.asarray(frozen(x, training=False)),
                       output_step(tmp_path / "recurrent.tflite"), tolerance=4.0)
    assert a.decided >= 20 and a.rate >= 0.99, a


@pytest.mark.slow
@pytest.mark.parametrize("kname", KERASES)
def test_transformer_encoder_block_end_to_end(kname, tmp_path):
    """Embedding -> encoder block (LayerNormalization, MultiHeadAttention, Add, Dense(gelu)
    on 3-D inputs) -> GlobalAveragePooling1D -> Dense, under a 5-bit budget. The attention is
    bit-pruned (its kernels, scores and context on learned grids, its softmax on TFLite's
    fixed grid); the LayerNormalization statistics are calibrated; everything else is on
    learned grids."""
    keras = KERASES[kname]
    L = keras.layers
    (x, y), (xt, yt) = _sentiment(3072, 0), _sentiment(1024, 1)
    inputs = keras.Input((STEPS,), dtype="int32")
    h = L.Embedding(VOCAB, 16, name="embedding")(inputs)
    a = L.LayerNormalization(name="norm_1")(h)
    h = L.Add()([h, L.MultiHeadAttention(2, 8, name="attention")(a, a)])
    a = L.Dense(32, activation="gelu")(L.LayerNormalization(name="norm_2")(h))
    h = L.Add()([h, L.Dense(16)(a)])
    model = keras.Model(inputs, L.Dense(2)(L.GlobalAveragePooling1D()(h)))
    loss = keras.losses.SparseCategoricalCrossentropy(from_logits=True)
    model.compile(keras.optimizers.Adam(2e-3), loss, metrics=["accuracy"])
    model.fit(x, y, epochs=6, batch_size=64, verbose=0)
    float_accuracy = model.evaluate(xt, yt, verbose=0)[1]
    bp = tfbp.bitprune_model(model)
    bp.compile(keras.optimizers.Adam(1e-3), loss, metrics=["accuracy"])
    bp.fit(x, y, epochs=4, batch_size=64, verbose=0, callbacks=[tfbp.BitBudget(5.0)])
    assert {f"attention.{p}/weights" for p in ("query", "key", "value", "output")} <= set(tfbp.bitlengths(bp))
    frozen = tfbp.freeze_bitlengths(bp)
    frozen.compile(keras.optimizers.Adam(5e-4), loss, metrics=["accuracy"])
    frozen.fit(x, y, epochs=2, batch_size=64, verbose=0)
    path = tmp_path / "encoder.tflite"
    info = export_tflite(frozen, path, representative_dataset=x[:256])
    assert {(e["layer"], e["source"]) for e in info["calibrated"]} == {
        ("attention.softmax", "fixed"), ("norm_1", "representative_dataset"), ("norm_2", "representative_dataset")}
    got, _ = run_file(path, xt)
    # Calibrated 8-bit statistics and LiteRT's approximate softmax move the logits by a few
    # steps (see the per-kind tests): top-1 where the reference margin exceeds what 3 steps can move.
    a = top1_agreement(got, np.asarray(frozen(xt, training=False)), output_step(path), tolerance=3.0)
    deployed = float(np.mean(got.argmax(1) == yt))
    print(f"{kname}: float {float_accuracy:.4f}, deployed {deployed:.4f}, bits {tfbp.average_bits(frozen):.2f}, {a}")
    assert a.decided >= 500 and a.rate >= 0.99, a
    assert float_accuracy >= 0.8 and deployed >= float_accuracy - 0.03, (float_accuracy, deployed)


@pytest.mark.slow
@pytest.mark.parametrize("kname", KERASES)
def test_trained_gru_file_agrees_with_keras(kname, tmp_path):
    """GRU(32) over the 8 rows of a digit (inputs in [0, 1]), trained, bit-pruned at a 6-bit
    budget, frozen, fine-tuned and exported. The converter once quantized the GRU's input
    biases for the calibrated scale of its unstacked inputs (1/255) and then gave those
    inputs the learned 6-bit grid's (1/63): each step added its biases four times too large
    and a third of the decided inputs took another class (export/bias_scale.py)."""
    from examples import data

    keras = KERASES[kname]
    keras.utils.set_random_seed(0)
    x, y, xt, yt = (a[..., 0] if a.ndim == 4 else a for a in data.load("digits"))
    inputs = keras.Input((8, 8))
    model = keras.Model(inputs, keras.layers.Dense(10)(keras.layers.GRU(32, unroll=True, name="gru")(inputs)))
    loss = keras.losses.SparseCategoricalCrossentropy(from_logits=True)
    model.compile(keras.optimizers.Adam(3e-3), loss)
    model.fit(x, y, epochs=4, batch_size=32, verbose=0)
    bp = tfbp.bitprune_model(model)
    bp.compile(keras.optimizers.Adam(1e-3), loss)
    bp.fit(x, y, epochs=2, batch_size=32, verbose=0, callbacks=[tfbp.BitBudget(6.0)])
    frozen = tfbp.freeze_bitlengths(bp)
    frozen.compile(keras.optimizers.Adam(2e-4), loss)
    frozen.fit(x, y, epochs=1, batch_size=32, verbose=0)
    path = tmp_path / "gru.tflite"
    export_tflite(frozen, path, representative_dataset=x[:256])
    got = run_file(path, xt)[0]
    ref = np.asarray(frozen(xt, training=False))
    # Gates and states int8 at calibrated scales (Keras: float): a few steps of the logits,
    # as in test_recurrent_kernels_at_their_learned_bits_states_calibrated.
    a = top1_agreement(got, ref, output_step(path), tolerance=4.0)
    print(f"{kname}: {a}, Keras accuracy {np.mean(ref.argmax(1) == yt):.3f}, file {np.mean(got.argmax(1) == yt):.3f}")
    assert a.decided >= 100 and a.rate >= 0.99, a
