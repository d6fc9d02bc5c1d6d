"""The same workflow under both Kerases: tf_keras (through tfmot) and Keras 3 (our wrapper).

Every test runs on the same model, built with each Keras: bit-pruning, the budget
callback, budget-exact freezing, fine-tuning, the report, saving and loading
(h5 for tf_keras, ``.keras`` for Keras 3) and TFLite export with LiteRT agreement.
Keras 3-only behaviour (its errors, the export twin) is tested at the end.
"""

import os

import keras as keras3
import numpy as np
import pytest
import tensorflow as tf
import tf_keras

import tf_bitpruning as tfbp
from tf_bitpruning import costs
from tf_bitpruning.export.grids import activation_export

KERASES = {"tf_keras": tf_keras, "keras3": keras3}
TARGET = 4.0


def cnn(keras):
    """Conv-BN-ReLU, a depthwise conv with a fused relu, max pooling, a Dense classifier."""
    L = keras.layers
    inputs = keras.Input((8, 8, 1))
    x = L.Conv2D(16, 3, padding="same", use_bias=False)(inputs)
    x = L.ReLU()(L.BatchNormalization()(x))
    y = L.DepthwiseConv2D(3, padding="same", activation="relu")(x)
    x = L.Add()([x, y])
    x = L.Flatten()(L.MaxPooling2D()(x))
    return keras.Model(inputs, L.Dense(10)(x))


def _loss(keras):
    return keras.losses.SparseCategoricalCrossentropy(from_logits=True)


class Run:
    """One Keras' pass through the workflow, shared by the tests of that Keras."""

    def __init__(self, name, digits):
        keras = KERASES[name]
        keras.backend.clear_session()  # layer names from 0, whatever ran before
        keras.utils.set_random_seed(0)
        xtr, ytr, xte, yte = digits
        self.keras, self.xte, self.yte = keras, xte, yte
        self.float = cnn(keras)
        self.bp = tfbp.bitprune_model(self.float, regularization=0.05, bits_lr_multiplier=20.0)
        self.initial = tfbp.bitlengths(self.bp)
        self.bp.compile(keras.optimizers.Adam(3e-3), _loss(keras), metrics=["accuracy"])
        self.history = self.bp.fit(xtr, ytr, epochs=6, batch_size=64, verbose=0,
                                   callbacks=[tfbp.BitBudget(target_bits=TARGET)])
        self.learned = tfbp.bitlengths(self.bp)
        self.frozen = tfbp.freeze_bitlengths(self.bp, target_bits=TARGET - 0.5)
        self.frozen.compile(keras.optimizers.Adam(5e-4), _loss(keras), metrics=["accuracy"])
        self.before = self.frozen.evaluate(xtr, ytr, verbose=0)[0]
        self.frozen.fit(xtr, ytr, epochs=2, batch_size=64, verbose=0)
        self.after = self.frozen.evaluate(xtr, ytr, verbose=0)[0]


@pytest.fixture(scope="module")
def runs(digits):
    return {name: Run(name, digits) for name in KERASES}


@pytest.fixture(params=list(KERASES))
def run(request, runs):
    return runs[request.param]


@pytest.mark.slow
def test_same_tensors_under_both_kerases(runs):
    """The same registry and layout: the same tensors are quantized, starting at 8 bits."""
    names = [list(r.initial) for r in runs.values()]
    assert names[0] == names[1]
    assert set(runs["keras3"].initial.values()) == {8.0}
    # BN is folded into the conv (no output quantizer), the Add's output is quantized.
    assert "batch_normalization/activations" not in names[0] and "add/activations" in names[0]


@pytest.mark.slow
def test_bit_loss_is_part_of_the_loss(run):
    (bit_loss,) = [loss for loss in run.bp.losses]
    expected = float(costs.get_bit_loss(run.bp).regularization.numpy()) * tfbp.average_bits(run.bp)
    assert float(bit_loss) == pytest.approx(expected, rel=1e-5)


@pytest.mark.slow
def test_budget_met_with_integer_bits(run):
    """BitBudget anneals to integers at or under its target (uniform weighting)."""
    assert tfbp.average_bits(run.bp) <= TARGET + 1e-6
    assert all(float(b).is_integer() for b in run.learned.values())
    assert "avg_bits" in run.history.history and "bit_lambda" in run.history.history


@pytest.mark.slow
def test_freeze_meets_its_target_and_fine_tunes(run):
    bits = tfbp.bitlengths(run.frozen)
    assert tfbp.average_bits(run.frozen) <= TARGET - 0.5 + 1e-6
    # Within one tensor-step of the target: freezing lowers only what it must.
    assert tfbp.average_bits(run.frozen) >= TARGET - 0.5 - 1.0 / len(bits) - 1e-6
    assert all(t.quantizer.frozen for t in costs.quantized_tensors(run.frozen))
    assert not any("bits" in v.name for v in run.frozen.trainable_weights)
    assert run.after < run.before  # fine-tuning at fixed bitlengths lowers the training loss


@pytest.mark.parametrize("weighting", ["memory", "bops"])
@pytest.mark.slow
def test_budget_exact_freezing_with_other_weightings(run, weighting):
    """At or under a target of the weighting's average (a sanity floor: no tensor step is a bit)."""
    start = tfbp.average_bits(run.bp, weighting=weighting)
    target = start - 0.75
    frozen = tfbp.freeze_bitlengths(run.bp, target_bits=target, weighting=weighting,
                                    calibration_data=run.xte[:64])
    assert tfbp.average_bits(frozen, weighting=weighting) <= target + 1e-6
    assert tfbp.average_bits(frozen, weighting=weighting) >= target - 1.0


@pytest.mark.slow
def test_report_and_summary(run):
    report = tfbp.precision_report(run.frozen)
    assert [row["layer"] for row in report["rows"]][:2] == ["quantize_layer", "conv2d"]
    lines = []
    tfbp.summary(run.frozen, print_fn=lines.append)
    text = "\n".join(lines)
    assert "depthwise_conv2d" in text and "frozen" in text
    # Float parameters: the depthwise bias, BN's four vectors and the Dense bias (kernels are quantized).
    assert f"{16 + 4 * 16 + 10:,}" in text.splitlines()[-1]


@pytest.mark.slow
def test_save_and_load_round_trip(run, tmp_path):
    if run.keras is keras3:
        path = str(tmp_path / "frozen.keras")
        run.frozen.save(path)
        loaded = keras3.saving.load_model(path)
    else:
        path = str(tmp_path / "frozen.h5")
        tfbp.save_model(run.frozen, path)
        loaded = tfbp.load_model(path)
    np.testing.assert_array_equal(loaded.predict(run.xte, verbose=0), run.frozen.predict(run.xte, verbose=0))
    assert tfbp.bitlengths(loaded) == tfbp.bitlengths(run.frozen)
    old, new = costs.get_bit_loss(run.frozen), costs.get_bit_loss(loaded)
    assert float(new.regularization.numpy()) == float(old.regularization.numpy())
    assert (new.weighting, new.kind) == (old.weighting, old.kind)


@pytest.mark.slow
def test_learning_phase_model_round_trips_in_keras3_format(runs, tmp_path):
    """A model still learning (real bitlengths, annealing state) saves and loads exactly."""
    bp = runs["keras3"].bp
    path = str(tmp_path / "bp.keras")
    bp.save(path)
    loaded = keras3.saving.load_model(path)
    assert type(loaded).__name__ == "BitPrunedModel"
    np.testing.assert_array_equal(loaded.predict(runs["keras3"].xte, verbose=0),
                                  bp.predict(runs["keras3"].xte, verbose=0))
    # Not bit-equal: fit ends routing n through its integer; the reloaded model reads the
    # parameter the integer was written into (n / k, times k again: one float32 rounding).
    assert tfbp.bitlengths(loaded) == pytest.approx(tfbp.bitlengths(bp), rel=1e-6)
    assert float(costs.get_bit_loss(loaded).anneal_weight.numpy()) == float(
        costs.get_bit_loss(bp).anneal_weight.numpy())


@pytest.mark.slow
def test_keras3_model_loaded_from_keras_file_freezes(runs, tmp_path):
    """Train in one job, freeze in another: a loaded model freezes like the original."""
    bp = runs["keras3"].bp
    path = str(tmp_path / "bp.keras")
    bp.save(path)
    frozen = tfbp.freeze_bitlengths(keras3.saving.load_model(path), target_bits=TARGET - 0.5)
    assert tfbp.bitlengths(frozen) == tfbp.bitlengths(runs["keras3"].frozen)
    np.testing.assert_allclose(frozen.predict(runs["keras3"].xte, verbose=0),
                               tfbp.freeze_bitlengths(bp, target_bits=TARGET - 0.5).predict(
                                   runs["keras3"].xte, verbose=0), atol=1e-6)


@pytest.mark.slow
def test_export_agrees_in_litert(run, tmp_path):
    from tests.support.litert_run import output_step, run_tflite
    from tests.support.tflite_checks import top1_agreement

    path = str(tmp_path / "model.tflite")
    info = tfbp.export_tflite(run.frozen, path)
    precision = tfbp.read_precision(path)
    assert precision == info["layers"]
    assert {f"{layer}/{kind}": bits for layer, kinds in precision.items() for kind, bits in kinds.items()} \
        == tfbp.bitlengths(run.frozen)
    got, ref = run_tflite(path, run.xte), run.frozen.predict(run.xte, verbose=0)
    agreement = top1_agreement(got, ref, output_step(path))
    assert agreement.rate >= 0.995, agreement
    # The output grid is a few bits wide (how few depends on the machine's training run),
    # so many top-2 pairs sit within two steps (ties, not counted); enough examples must be
    # decided for the rate to mean something (below 200 decided, 0.995 allows no miss).
    assert agreement.decided >= len(ref) // 10, agreement
    assert agreement.off_grid_rate <= 0.1, agreement


# -- Keras 3 only ---------------------------------------------------------------------------------------

@pytest.mark.slow
def test_twin_computes_what_the_keras3_model_computes(runs):
    """The exporter's tf_keras twin has the same weights and grids: the same outputs."""
    from tf_bitpruning.keras3.bridge import to_tf_keras

    frozen = runs["keras3"].frozen
    twin = to_tf_keras(frozen)
    np.testing.assert_allclose(twin.predict(runs["keras3"].xte, verbose=0),
                               frozen.predict(runs["keras3"].xte, verbose=0), atol=1e-5)
    assert tfbp.bitlengths(twin) == tfbp.bitlengths(frozen)


def test_keras3_errors_name_the_problem():
    L = keras3.layers
    inputs = keras3.Input((4,))
    with_op = keras3.Model(inputs, L.Dense(2)(keras3.ops.square(inputs)))
    with pytest.raises(ValueError, match=r"op 'square' \(Square\).*no TFOpLambda counterpart.*Use a layer"):
        tfbp.bitprune_model(with_op)

    class Sub(keras3.Model):
        def call(self, x):
            return x

    with pytest.raises(ValueError, match="subclassed"):
        tfbp.bitprune_model(Sub())
    inner = keras3.Sequential([keras3.Input((4,)), L.Dense(2, name="inner_dense")])
    assert "inner_dense/weights" in tfbp.bitlengths(tfbp.bitprune_model(keras3.Model(inputs, inner(inputs))))
    with pytest.raises(TypeError, match="Keras 3.*bitprune_model"):
        tfbp.bitprune_annotate_layer(L.Dense(2))
    with pytest.raises(ValueError, match="skip_layers names no layer"):
        tfbp.bitprune_model(keras3.Sequential([keras3.Input((4,)), L.Dense(2)]), skip_layers=["nope"])


def test_keras3_needs_the_tensorflow_backend_and_a_recent_keras(monkeypatch):
    model = keras3.Sequential([keras3.Input((3,)), keras3.layers.Dense(2)])
    monkeypatch.setattr(keras3.backend, "backend", lambda: "jax")
    with pytest.raises(RuntimeError, match="TensorFlow backend only.*KERAS_BACKEND=tensorflow"):
        tfbp.bitprune_model(model)
    monkeypatch.undo()
    monkeypatch.setattr(keras3, "__version__", "3.9.2")
    with pytest.raises(RuntimeError, match=r"Keras >= 3\.10.*3\.9\.2"):
        tfbp.bitprune_model(model)


@pytest.mark.slow
def test_keras3_backup_and_restore_resumes_exactly(digits, tmp_path):
    """Keras 3's BackupAndRestore with BitBudget: a run stopped after 2 of 4 epochs and
    resumed ends where an uninterrupted run ends (λ path, annealing, weights): the
    budget's state is among BitPrunedModel's own saved variables."""
    xtr, ytr = digits[0][:640], digits[1][:640]

    class Stop(Exception):
        pass

    class StopAfter(keras3.callbacks.Callback):
        def on_epoch_end(self, epoch, logs=None):
            if epoch == 1:
                raise Stop()

    def run(backup=None, stop=False):
        keras3.backend.clear_session()
        keras3.utils.set_random_seed(0)
        bp = tfbp.bitprune_model(cnn(keras3), regularization=0.05, bits_lr_multiplier=20.0)
        bp.compile(keras3.optimizers.Adam(1e-3), _loss(keras3))
        callbacks = [tfbp.BitBudget(target_bits=3.0)]
        callbacks += [keras3.callbacks.BackupAndRestore(backup)] if backup else []
        callbacks += [StopAfter()] if stop else []
        history = bp.fit(xtr, ytr, epochs=4, batch_size=32, shuffle=False, verbose=0, callbacks=callbacks)
        return bp, history.history

    reference, history = run()
    backup = str(tmp_path / "backup")
    with pytest.raises(Stop):
        run(backup, stop=True)
    resumed, resumed_history = run(backup)
    assert len(resumed_history["loss"]) == 2  # it did resume at epoch 3
    # Annealing (the last quarter of the 4 epochs' steps) happened after the resume: the
    # comparison covers the restored λ and annealing state, not only the weights.
    assert history["bit_lambda"][0] != history["bit_lambda"][-1]
    assert resumed_history["bit_lambda"] == history["bit_lambda"][2:]
    assert list(tfbp.bitlengths(resumed).values()) == list(tfbp.bitlengths(reference).values())
    for a, b in zip(reference.get_weights(), resumed.get_weights()):
        np.testing.assert_array_equal(a, b)


def test_keras3_sequential_and_skip_layers():
    L = keras3.layers
    model = keras3.Sequential([keras3.Input((6,)), L.Dense(8, activation="relu", name="hidden"),
                               L.Dense(3, activation="softmax", name="head")])
    bp = tfbp.bitprune_model(model, skip_layers=["head"])
    assert sorted(tfbp.bitlengths(bp)) == ["hidden/activations", "hidden/weights", "quantize_layer/activations"]
    x = np.random.RandomState(0).rand(4, 6).astype("float32")
    np.testing.assert_allclose(bp.predict(x, verbose=0).sum(axis=1), 1.0, rtol=1e-5)  # softmax head kept


def _separable_model(keras):
    L = keras.layers
    inputs = keras.Input((8, 8, 3))
    x = L.SeparableConv2D(8, 3, padding="same", use_bias=False, name="block1_sepconv1")(inputs)
    x = L.ReLU(name="block1_sepconv1_act")(L.BatchNormalization(name="block1_sepconv1_bn")(x))
    x = L.SeparableConv2D(8, 3, depth_multiplier=2, activation="relu", name="block1_sepconv2")(x)
    x = L.SeparableConv2D(8, 3, name="kept")(x)
    return keras.Model(inputs, L.Dense(10, name="head")(L.GlobalAveragePooling2D(name="gap")(x)))


def test_keras3_splits_separable_conv2d_as_tf_keras_does():
    """SeparableConv2D -> <name>_depthwise, <name>_pointwise under both Kerases: the same
    layers, the same quantizers (the inner tensor's grid on the depthwise output), the
    weights copied (the same function before training); a skipped one stays whole."""
    runs = {}
    x = np.random.RandomState(0).rand(8, 8, 8, 3).astype("float32")
    for name, keras in KERASES.items():
        keras.utils.set_random_seed(0)
        model = _separable_model(keras)
        bp = tfbp.bitprune_model(model, init_bits=8.0, skip_layers=["kept"])
        ref = np.asarray(model(x))
        assert np.abs(np.asarray(bp(x)) - ref).max() <= 0.05 * np.ptp(ref), name
        # A skipped layer stays whole, its kernels float (tfmot alone quantizes its output).
        assert not any("kept_" in layer.name for layer in bp.layers), name
        assert set(n for n in tfbp.bitlengths(bp) if n.startswith("kept")) <= {"kept/activations"}, name
        runs[name] = ([n for n in (layer.name for layer in bp.layers[1:]) if not n.endswith("kept")],
                      sorted(n for n in tfbp.bitlengths(bp) if n != "kept/activations"))
    assert runs["keras3"] == runs["tf_keras"]
    names, bits = runs["keras3"]
    assert names[:4] == ["quantize_layer", "quant_block1_sepconv1_depthwise", "quant_block1_sepconv1_pointwise",
                         "quant_block1_sepconv1_bn"] and "quant_block1_sepconv2_pointwise" in names
    assert "block1_sepconv1_depthwise/activations" in bits and "block1_sepconv1_pointwise/activations" not in bits


@pytest.mark.slow
def test_keras3_tensorboard_histograms(digits, tmp_path):
    xtr, ytr, _, _ = digits
    keras3.utils.set_random_seed(0)
    bp = tfbp.bitprune_model(cnn(keras3))
    bp.compile(keras3.optimizers.Adam(1e-3), _loss(keras3))
    log_dir = str(tmp_path / "logs")
    bp.fit(xtr[:256], ytr[:256], epochs=1, batch_size=64, verbose=0,
           callbacks=[tfbp.BitBudget(target_bits=6.0, log_dir=log_dir), keras3.callbacks.TensorBoard(log_dir)])
    tags = set()
    for root, _, files in os.walk(os.path.join(log_dir, "bitpruning")):
        for f in files:
            for event in tf.compat.v1.train.summary_iterator(os.path.join(root, f)):
                tags.update(v.tag for v in event.summary.value)
    assert {"bits_histogram/weights", "bits_histogram/activations", "avg_bits"} <= tags
    assert os.path.isdir(os.path.join(log_dir, "train"))  # Keras 3's own callback beside it


@pytest.mark.slow
def test_keras3_save_model_and_load_model(runs, tmp_path):
    """tfbp.save_model/load_model take Keras 3 models in .keras files, atomically."""
    frozen = runs["keras3"].frozen
    path = str(tmp_path / "m.keras")
    with pytest.raises(ValueError, match="'.keras'"):
        tfbp.save_model(frozen, str(tmp_path / "m.h5"))
    assert os.listdir(tmp_path) == []
    tfbp.save_model(frozen, path)
    assert sorted(os.listdir(tmp_path)) == ["m.keras"]  # no temporary file left behind
    loaded = tfbp.load_model(path, regularization=0.5)
    assert float(costs.get_bit_loss(loaded).regularization.numpy()) == 0.5
    np.testing.assert_array_equal(loaded.predict(runs["keras3"].xte, verbose=0),
                                  frozen.predict(runs["keras3"].xte, verbose=0))
    with pytest.raises(ValueError, match="weighting='uniform'.*'memory'"):
        tfbp.load_model(path, weighting="memory")


@pytest.mark.slow  # a subprocess
def test_keras3_layers_are_registered_for_a_plain_load(tmp_path):
    """A fresh process loads a bit-pruned .keras file after `import tf_bitpruning` alone."""
    import subprocess
    import sys

    bp = tfbp.bitprune_model(keras3.Sequential([keras3.Input((3,)), keras3.layers.Dense(2, name="head")]))
    path = str(tmp_path / "bp.keras")
    bp.save(path)
    code = ("import keras, tf_bitpruning as tfbp; m = keras.saving.load_model(%r); "
            "print(type(m).__name__, sorted(tfbp.bitlengths(m)))" % path)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300,
                         env=dict(os.environ, PYTHONPATH=os.path.dirname(os.path.dirname(tfbp.__file__))))
    assert out.returncode == 0, out.stderr[-2000:]
    assert "BitPrunedModel ['head/activations', 'head/weights', 'quantize_layer/activations']" in out.stdout


def _zoo(xtr, ytr, calibrated_kinds: bool):
    """Keras 3 layers of every kind the registry knows: preprocessing, swish/sigmoid inside
    kernels, separable and depthwise convs, BN, relu6 Activations, squeeze-excite (Multiply),
    padding, concatenation, pooling, reshape; with ``calibrated_kinds`` also hard_sigmoid (whose
    inner tensors the converter calibrates) and gelu (inside a conv and as an Activation)."""
    keras3.utils.set_random_seed(0)
    L = keras3.layers
    side, last = ("hard_sigmoid", "gelu") if calibrated_kinds else ("relu", "swish")
    inputs = keras3.Input((16, 16, 3))
    x = L.Rescaling(1 / 255.0, name="rescaling")(inputs)  # named: a second zoo in the process would get "rescaling_1"
    x = L.Conv2D(8, 3, padding="same", activation="swish")(x)
    a = L.Activation("relu6")(L.BatchNormalization()(L.SeparableConv2D(8, 3, padding="same")(x)))
    b = L.Activation(side)(L.DepthwiseConv2D(3)(L.ZeroPadding2D(1)(x)))
    se = L.Conv2D(8, 1, activation="sigmoid")(L.GlobalAveragePooling2D(keepdims=True)(a))
    x = L.AveragePooling2D(2)(L.Concatenate()([L.Multiply()([a, se]), b]))
    x = L.Activation(last)(L.Conv2D(4, 1, activation=last)(x))
    x = L.Reshape((-1,))(L.MaxPooling2D(4)(x))
    model = keras3.Model(inputs, L.Dense(10)(x))
    bp = tfbp.bitprune_model(model, regularization=0.02)
    assert "rescaling/activations" in tfbp.bitlengths(bp) and "quantize_layer/activations" not in tfbp.bitlengths(bp)
    bp.compile(keras3.optimizers.Adam(3e-3), _loss(keras3))
    bp.fit(xtr, ytr, epochs=4, batch_size=64, verbose=0, callbacks=[tfbp.BitBudget(target_bits=6.0)])
    frozen = tfbp.freeze_bitlengths(bp)
    frozen.compile(keras3.optimizers.Adam(3e-4), _loss(keras3))
    frozen.fit(xtr, ytr, epochs=1, batch_size=64, verbose=0)
    return frozen


def _up(x):  # 16x16 RGB in [0, 255]
    return np.repeat(np.kron(x, np.ones((1, 2, 2, 1))), 3, axis=-1).astype("float32") * 255.0


def _zoo_agreement(digits, tmp_path, calibrated_kinds: bool):
    from tests.support.litert_run import output_step, run_tflite
    from tests.support.tflite_checks import top1_agreement
    from tf_bitpruning.keras3.bridge import to_tf_keras

    xtr, ytr, xte = _up(digits[0]), digits[1], _up(digits[2])
    frozen = _zoo(xtr, ytr, calibrated_kinds)
    ref = frozen.predict(xte, verbose=0)
    # The twin is exactly this model (hard_sigmoid differs between the Kerases: Keras 3's is kept).
    np.testing.assert_allclose(to_tf_keras(frozen).predict(xte, verbose=0), ref, atol=1e-5)
    path = str(tmp_path / "zoo.tflite")
    # Calibration data only where a tensor has no learned grid (hard_sigmoid's internals).
    tfbp.export_tflite(frozen, path, representative_dataset=xtr[:128] if calibrated_kinds else None)
    got = run_tflite(path, xte)
    assert got.shape == ref.shape and np.isfinite(got).all()
    (head,) = [t for t in costs.quantized_tensors(frozen) if t.kind == "activations"
               and t.wrapper == frozen.layers[-1].name]
    grid = activation_export(head.quantizer, head.variables, head.wrapper)
    assert np.isclose(output_step(path), grid.step, rtol=1e-5), (output_step(path), grid.step)
    # Top-1 where Keras decides (top-2 margin above two output steps); every decided input
    # must agree and there must be some (tests/support/tflite_checks.py).
    agreement = top1_agreement(got, ref, output_step(path))
    assert agreement.decided >= len(ref) // 10, agreement
    assert agreement.rate >= 0.995, agreement


@pytest.mark.slow
def test_keras3_layer_kinds_export_and_agree(digits, tmp_path):
    """Every layer kind with a learned grid, Keras 3 through the whole pipeline: the
    file agrees with the model in LiteRT."""
    _zoo_agreement(digits, tmp_path, calibrated_kinds=False)


@pytest.mark.slow
def test_keras3_layer_kinds_with_calibrated_intermediates_agree(digits, tmp_path):
    """hard_sigmoid and gelu too. (Once 4 output steps off at the median: the gelu before
    ``Activation("gelu")`` had no grid, test_gelu_inputs_are_on_learned_grids.)"""
    _zoo_agreement(digits, tmp_path, calibrated_kinds=True)


@pytest.mark.parametrize("name", ["tf_keras", "keras3"])
def test_gelu_inputs_are_on_learned_grids(name):
    """TFLite runs GELU as an op of its own (nothing fuses it into a kernel): its int8 input
    needs a learned grid, else the converter calibrates one and the file computes something
    else. A gelu inside a layer is quantized before as well as after (like a swish); a
    layer before ``Activation("gelu")`` keeps its output quantizer."""
    from tf_bitpruning import activations

    keras = KERASES[name]
    L = keras.layers
    assert activations.pre_quantized(activations.quantize_aware(keras.activations.get("gelu"), True))
    assert not activations.pre_quantized(activations.quantize_aware(keras.activations.get("gelu"), False))
    inputs = keras.Input((4, 4, 3))
    x = L.Conv2D(8, 1, activation="gelu", name="inside")(inputs)
    x = L.Activation("gelu", name="act")(L.Conv2D(8, 1, name="before")(x))
    bp = tfbp.bitprune_model(keras.Model(inputs, x))
    assert {"before/activations", "inside/activations", "act/activations"} <= set(tfbp.bitlengths(bp))


@pytest.mark.slow  # traces and fits
def test_keras3_evaluate_and_fit_trace_their_step_once():
    """Without a distribution strategy Keras 3 creates the metrics' and the optimizer's
    variables inside the first trace of a step, and a tf.function that creates variables
    is traced again; a BitPrunedModel creates them first (``BuildBeforeTrace``): one trace
    per step function (a trace of a large bit-pruned model's train step takes a minute)."""
    keras3.utils.set_random_seed(0)
    bp = tfbp.bitprune_model(cnn(keras3))
    bp.compile(keras3.optimizers.Adam(1e-3), _loss(keras3), metrics=["accuracy"])
    traces = {"train": 0, "test": 0}

    def counted(kind, step):
        def step_traced(data):
            traces[kind] += 1  # Python runs only while the step function is traced
            return step(data)
        return step_traced

    bp.train_step, bp.test_step = counted("train", bp.train_step), counted("test", bp.test_step)
    rng = np.random.default_rng(0)
    x, y = rng.random((32, 8, 8, 1), dtype=np.float32), rng.integers(0, 10, 32)
    bp.evaluate(x, y, batch_size=8, verbose=0)
    bp.fit(x, y, batch_size=8, epochs=2, verbose=0)
    assert traces == {"train": 1, "test": 1}
