"""Training-only layers (augmentation, noise) pass through, and nested models are
flattened (issue 19, items 1 and 2), under tf_keras and Keras 3."""

import os

os.environ.setdefault("KERAS_BACKEND", "tensorflow")

import keras as keras3  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402
import tf_keras  # noqa: E402
from tensorflow.lite.tools import flatbuffer_utils  # noqa: E402

import tf_bitpruning as tfbp  # noqa: E402

KERASES = {"tf_keras": tf_keras, "keras3": keras3}
BOTH = pytest.mark.parametrize("kname", sorted(KERASES))


def _ops(path) -> set:
    model = flatbuffer_utils.read_model(str(path))
    return {flatbuffer_utils.opcode_to_name(model, op.opcodeIndex) for op in model.subgraphs[0].operators}


def _augmentation(K):
    layers = [K.layers.RandomFlip("horizontal", name="flip"), K.layers.RandomRotation(0.1, name="rotate"),
              K.layers.RandomZoom(0.1, name="zoom"), K.layers.RandomTranslation(0.1, 0.1, name="shift"),
              K.layers.RandomContrast(0.2, name="contrast"), K.layers.RandomBrightness(0.1, name="bright")]
    return layers


def _train_step(model, x, y):
    model.compile("adam", "mse")
    model.fit(x, y, epochs=1, batch_size=8, verbose=0)


def _export_agrees(frozen, x, path):
    """Exports ``frozen`` without calibration data; LiteRT agrees with Keras within a few output
    steps (an unaligned model: rounding ties, see align_to_tflite). Returns the file's ops."""
    from tests.support.litert_run import output_step, run_tflite
    tfbp.export_tflite(frozen, path)
    got, ref = run_tflite(path, x), frozen.predict(x, verbose=0)
    assert np.abs(got - ref).max() <= 4.01 * output_step(path)
    return _ops(path)


@BOTH
def test_training_only_layers_pass_through(kname, tmp_path):
    K = KERASES[kname]
    inp = K.Input((12, 12, 3))
    x = inp
    for layer in _augmentation(K):
        x = layer(x)
    x = K.layers.Rescaling(1 / 255.0, name="rescale")(x)
    x = K.layers.Conv2D(4, 3, name="conv")(x)
    x = K.layers.GaussianNoise(0.1, name="noise")(x)
    x = K.layers.SpatialDropout2D(0.1, name="sdrop")(x)
    x = K.layers.ReLU(name="relu")(x)
    x = K.layers.GaussianDropout(0.1, name="gdrop")(x)
    x = K.layers.GlobalAveragePooling2D(name="gap")(x)
    x = K.layers.AlphaDropout(0.1, name="adrop")(x)
    x = K.layers.ActivityRegularization(0.01, name="areg")(x)
    model = K.Model(inp, K.layers.Dense(3, name="dense")(x))
    bp = tfbp.bitprune_model(model)
    bits = tfbp.bitlengths(bp)
    # The input quantizer moved to the end of the float chain (Rescaling): no quantize_layer.
    assert "rescale/activations" in bits and not any(k.startswith("quantize_layer") for k in bits)
    assert not any(k.split("/")[0] in ("noise", "sdrop", "gdrop", "adrop", "areg") for k in bits)
    rng = np.random.default_rng(0)
    x = rng.uniform(0, 255, (16, 12, 12, 3)).astype("float32")
    _train_step(bp, x, rng.normal(size=(16, 3)).astype("float32"))
    frozen = tfbp.freeze_bitlengths(bp)
    ops = _export_agrees(frozen, x, tmp_path / "m.tflite")
    assert ops <= {"QUANTIZE", "DEQUANTIZE", "MUL", "ADD", "CONV_2D", "MEAN", "FULLY_CONNECTED",
                   "RESIZE_BILINEAR", "STRIDED_SLICE", "SLICE", "AVERAGE_POOL_2D", "MAXIMUM", "MINIMUM",
                   "RESHAPE"}, ops


@BOTH
def test_augmentation_last_in_the_chain_quantizes_the_input(kname):
    K = KERASES[kname]
    inp = K.Input((8, 8, 1))
    x = K.layers.RandomFlip(name="flip")(inp)
    model = K.Model(inp, K.layers.Conv2D(2, 3, name="conv")(x))
    bits = tfbp.bitlengths(tfbp.bitprune_model(model))
    assert "flip/activations" in bits and not any(k.startswith("quantize_layer") for k in bits)


@BOTH
def test_random_crop_runs_in_the_float_chain_as_keras_does_at_inference(kname, tmp_path):
    """RandomCrop is not the identity at inference under tf_keras (a center crop to the target's
    aspect ratio, resized to it: ``smart_resize``); Keras 3 (3.15) returns its input unchanged.
    Either way it runs in float before the input quantizer (like Rescaling), and the file
    computes what the Keras model computes at inference."""
    K = KERASES[kname]
    inp = K.Input((12, 14, 3))
    x = K.layers.RandomCrop(8, 8, name="crop")(inp)
    x = K.layers.Rescaling(1 / 255.0, name="rescale")(x)
    x = K.layers.Conv2D(4, 3, activation="relu", name="conv")(x)
    model = K.Model(inp, K.layers.Dense(3, name="dense")(K.layers.GlobalAveragePooling2D(name="gap")(x)))
    bp = tfbp.bitprune_model(model)
    bits = tfbp.bitlengths(bp)
    assert "rescale/activations" in bits and not any(k.startswith(("quantize_layer", "crop")) for k in bits)
    rng = np.random.default_rng(0)
    x = rng.uniform(0, 255, (16, 12, 14, 3)).astype("float32")
    _train_step(bp, x, rng.normal(size=(16, 3)).astype("float32"))
    frozen = tfbp.freeze_bitlengths(bp)
    ops = _export_agrees(frozen, x, tmp_path / "m.tflite")
    # The crop at inference: the bit-pruned model's conv reads what Keras' RandomCrop gives.
    crop = np.asarray(K.layers.RandomCrop(8, 8)(x, training=False))
    assert crop.shape[1:3] == ((8, 8) if kname == "tf_keras" else (12, 14))
    assert ("RESIZE_BILINEAR" in ops) == (kname == "tf_keras"), ops


def test_random_crop_of_ours_is_tf_keras_random_crop():
    """The tf_keras layer bit pruning puts in RandomCrop's place computes the same (at inference;
    while training both crop at random)."""
    from tf_bitpruning.op_lambdas import RandomCrop

    x = np.random.default_rng(0).uniform(0, 255, (2, 12, 14, 3)).astype("float32")
    ours = RandomCrop(8, 8)
    np.testing.assert_allclose(ours(x, training=False), tf_keras.layers.RandomCrop(8, 8)(x, training=False))
    np.testing.assert_array_equal(RandomCrop(8, 8, identity_at_inference=True)(x, training=False), x)
    assert ours(x, training=True).shape == (2, 8, 8, 3)
    assert RandomCrop.from_config(ours.get_config()).get_config() == ours.get_config()


# -- nested models (issue 19, item 1) --------------------------------------------------------------

SHAPE = (16, 16, 3)


def _backbone(K, name="backbone", prefix=""):
    """A small functional backbone: (Conv2D-BN-ReLU) x 2."""
    inp = K.Input(SHAPE)
    x = inp
    for i in (1, 2):
        x = K.layers.Conv2D(4 * i, 3, use_bias=False, name=f"{prefix}conv{i}")(x)
        x = K.layers.BatchNormalization(name=f"{prefix}bn{i}")(x)
        x = K.layers.ReLU(name=f"{prefix}relu{i}")(x)
    return K.Model(inp, x, name=name)


def _recipe(K, base=None, trainable=True):
    """Keras' transfer-learning recipe, with the small backbone."""
    base = base or _backbone(K)
    base.trainable = trainable
    augment = K.Sequential([K.layers.RandomFlip("horizontal", name="flip"),
                            K.layers.RandomRotation(0.1, name="rotate")], name="augment")
    inp = K.Input(SHAPE)
    x = K.layers.Rescaling(1 / 127.5, offset=-1, name="rescale")(augment(inp))
    x = base(x, training=False)
    x = K.layers.GlobalAveragePooling2D(name="gap")(x)
    x = K.layers.Dropout(0.2, name="drop")(x)
    return K.Model(inp, K.layers.Dense(3, name="head")(x), name="recipe")


def _flat_recipe(K):
    inp = K.Input(SHAPE)
    x = K.layers.RandomRotation(0.1, name="rotate")(K.layers.RandomFlip("horizontal", name="flip")(inp))
    x = K.layers.Rescaling(1 / 127.5, offset=-1, name="rescale")(x)
    for i in (1, 2):
        x = K.layers.Conv2D(4 * i, 3, use_bias=False, name=f"conv{i}")(x)
        x = K.layers.BatchNormalization(name=f"bn{i}")(x)
        x = K.layers.ReLU(name=f"relu{i}")(x)
    x = K.layers.Dropout(0.2, name="drop")(K.layers.GlobalAveragePooling2D(name="gap")(x))
    return K.Model(inp, K.layers.Dense(3, name="head")(x), name="flat")


def _data(n=16, seed=0):
    rng = np.random.default_rng(seed)
    return (rng.uniform(0, 255, (n,) + SHAPE).astype("float32"), rng.normal(size=(n, 3)).astype("float32"))


def _variable(model, layer: str, what: str):
    """The value of the variable ``what`` of the (wrapped) layer named ``layer``."""
    for w in model.weights:
        path = getattr(w, "path", w.name)
        if layer in path.split("/")[0].replace("quant_", "") and what == path.split("/")[-1].split(":")[0]:
            return np.array(w)
    raise KeyError(f"{layer}/{what}")


@BOTH
def test_nested_recipe_quantizes_what_the_flat_model_does(kname):
    K = KERASES[kname]
    bp = tfbp.bitprune_model(_recipe(K))
    flat = tfbp.bitprune_model(_flat_recipe(K))
    assert sorted(tfbp.bitlengths(bp)) == sorted(tfbp.bitlengths(flat))
    # The BN after each conv folds (the conv's output quantizer dropped; the ReLU's is the one
    # kept), the input quantizer follows the preprocessing chain (augmentation, rescaling).
    bits = tfbp.bitlengths(bp)
    assert "conv1/activations" not in bits and "bn1/activations" not in bits and "relu1/activations" in bits
    assert "rescale/activations" in tfbp.bitlengths(bp)
    x, y = _data()
    _train_step(bp, x, y)


@BOTH
def test_sequential_around_a_backbone(kname, tmp_path):
    K = KERASES[kname]
    model = K.Sequential([K.Input(SHAPE), _backbone(K), K.layers.GlobalAveragePooling2D(name="gap"),
                          K.layers.Dense(3, name="head")])
    bp = tfbp.bitprune_model(model)
    assert {"conv1/weights", "conv2/weights", "head/weights"} <= set(tfbp.bitlengths(bp))
    x, y = _data()
    np.testing.assert_allclose(tfbp.bitprune_model(model, init_bits=16, activation_bits=(1, 16),
                                                   weight_bits=(2, 16)).predict(x, verbose=0),
                               model.predict(x, verbose=0), atol=0.05)
    _train_step(bp, x, y)
    frozen = tfbp.freeze_bitlengths(bp)
    _export_agrees(frozen, x, tmp_path / "seq.tflite")


@BOTH
def test_nested_twice_and_name_collisions(kname):
    """Models nested two deep; two inner models with the same layer names: the second's are
    renamed ``<inner model>.<name>``."""
    K = KERASES[kname]
    inp = K.Input(SHAPE)
    inner = K.Model(inp, _backbone(K, "core")(inp), name="middle")
    other = _backbone(K, "other")
    x = K.layers.Add(name="add")([inner(inp), other(inp)])
    out = K.layers.Dense(3, name="head")(K.layers.GlobalAveragePooling2D(name="gap")(x))
    bp = tfbp.bitprune_model(K.Model(inp, out))
    names = {key.split("/")[0] for key in tfbp.bitlengths(bp)}
    assert {"conv1", "conv2", "other.conv1", "other.conv2", "add"} <= names, names
    _train_step(bp, *_data())


def test_training_false_keeps_batchnorm_in_inference_mode():
    """tf_keras records base(x, training=False): the flat model's BNs keep their moving
    statistics while the model trains, and their outputs use them."""
    K = tf_keras
    inp = K.Input(SHAPE)
    x = K.layers.GlobalAveragePooling2D(name="gap")(_backbone(K)(inp, training=False))
    model = K.Model(inp, K.layers.Dense(3, name="head")(x))
    bp = tfbp.bitprune_model(model)
    before = _variable(bp, "bn1", "moving_mean"), _variable(bp, "bn2", "moving_variance")
    x, y = _data()
    _train_step(bp, x, y)
    after = _variable(bp, "bn1", "moving_mean"), _variable(bp, "bn2", "moving_variance")
    for a, b in zip(before, after):
        np.testing.assert_array_equal(a, b)
    # The model in training mode computes what it does in inference (BN on moving statistics).
    frozen = tfbp.freeze_bitlengths(bp)
    np.testing.assert_allclose(frozen(x, training=True), frozen(x, training=False), atol=1e-5)


def test_training_false_batchnorm_output_learns_its_range(tmp_path):
    """A backbone BN whose output is quantized (no ReLU after it: MobileNetV2's projection
    convs) learns its output range under base(x, training=False), so the model exports."""
    K = tf_keras
    inp = K.Input(SHAPE)
    x = K.layers.BatchNormalization(name="bn")(K.layers.Conv2D(4, 3, use_bias=False, name="conv")(inp))
    base = K.Model(inp, x, name="backbone")
    inp = K.Input(SHAPE)
    x = K.layers.GlobalAveragePooling2D(name="gap")(base(inp, training=False))
    bp = tfbp.bitprune_model(K.Model(inp, K.layers.Dense(3, name="head")(x)))
    assert "bn/activations" in tfbp.bitlengths(bp)
    before = _variable(bp, "bn", "moving_mean")
    _train_step(bp, *_data())
    np.testing.assert_array_equal(before, _variable(bp, "bn", "moving_mean"))
    frozen = tfbp.freeze_bitlengths(bp)
    tfbp.export_tflite(frozen, tmp_path / "m.tflite")  # refused if the BN's range stayed empty


@BOTH
def test_frozen_backbone_keeps_its_kernels(kname):
    K = KERASES[kname]
    bp = tfbp.bitprune_model(_recipe(K, trainable=False))
    trainable = {getattr(w, "path", w.name) for w in bp.trainable_weights}
    kernels = [t for t in trainable if ("conv1" in t or "conv2" in t) and t.split("/")[-1].startswith("kernel:")
               or t.split("/")[-1] == "kernel"]
    assert not [k for k in kernels if "head" not in k], trainable
    # The backbone's bitlengths are still learned: they belong to the quantizers, not to the
    # frozen layers, and a budget needs them.
    assert any("conv1" in t and "kernel_bits" in t for t in trainable), trainable
    before = [_variable(bp, layer, what) for layer, what in
              (("conv1", "kernel"), ("conv2", "kernel"), ("bn1", "moving_mean"), ("bn2", "gamma"))]
    bits_before = tfbp.bitlengths(bp)
    _train_step(bp, *_data())
    after = [_variable(bp, layer, what) for layer, what in
             (("conv1", "kernel"), ("conv2", "kernel"), ("bn1", "moving_mean"), ("bn2", "gamma"))]
    for a, b in zip(before, after):
        np.testing.assert_array_equal(a, b)
    assert tfbp.bitlengths(bp)["conv1/weights"] != bits_before["conv1/weights"]


@pytest.mark.slow
@BOTH
@pytest.mark.parametrize("trainable", [True, False])
def test_recipe_end_to_end(kname, trainable, tmp_path):
    """The transfer-learning recipe: bitprune_model -> fit(BitBudget) -> freeze_bitlengths ->
    fit -> save/load -> export_tflite, LiteRT agreeing with the frozen model; the report
    and summary list the backbone's layers."""
    from tests.support.litert_run import output_step, run_tflite
    from tests.support.tflite_checks import top1_agreement
    K = KERASES[kname]
    rng = np.random.default_rng(1)
    x = rng.uniform(0, 255, (96,) + SHAPE).astype("float32")
    labels = (x[..., 0].mean(axis=(1, 2)) > x[..., 1].mean(axis=(1, 2))).astype("int64") \
        + (x[..., 2].mean(axis=(1, 2)) > 127.5)
    y = np.eye(3, dtype="float32")[labels]
    K.utils.set_random_seed(0)
    bp = tfbp.bitprune_model(_recipe(K, trainable=trainable), regularization=0.05)
    bp.compile(K.optimizers.Adam(1e-3), "categorical_crossentropy")
    bp.fit(x, y, epochs=3, batch_size=16, verbose=0, callbacks=[tfbp.BitBudget(target_bits=6.0)])
    frozen = tfbp.freeze_bitlengths(bp, target_bits=6.0)
    frozen.compile(K.optimizers.Adam(1e-3), "categorical_crossentropy")
    frozen.fit(x, y, epochs=1, batch_size=16, verbose=0)
    rows = {row["layer"] for row in tfbp.precision_report(frozen)["rows"]}
    assert {"conv1", "conv2", "head"} <= rows, rows
    lines = []
    tfbp.summary(frozen, print_fn=lines.append)
    assert any("conv2" in line for line in lines)
    path = tmp_path / ("m.keras" if kname == "keras3" else "m.h5")
    tfbp.save_model(frozen, str(path))
    loaded = tfbp.load_model(str(path))
    np.testing.assert_allclose(loaded.predict(x, verbose=0), frozen.predict(x, verbose=0), atol=1e-6)
    assert tfbp.bitlengths(loaded) == tfbp.bitlengths(frozen)
    out = tmp_path / "recipe.tflite"
    tfbp.export_tflite(loaded, out)
    agreement = top1_agreement(run_tflite(out, x), loaded.predict(x, verbose=0), output_step(out))
    assert agreement.rate >= 0.9, agreement
