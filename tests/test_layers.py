"""Layer kinds of the keras.applications families: each is annotated, trained,
frozen, exported and compared with Keras in LiteRT (digits, tiny models).

Kinds: float preprocessing (Rescaling, Normalization), TFOpLambda math
(hard-swish: ``x * relu6(x + 3) * (1/6)``, subtract, truediv by a constant),
Activation variants, squeeze-excite (Multiply), global pooling, Reshape,
padding, same-scale ops (average/max pooling, concatenation), a
BatchNormalization that follows an Add or a Concatenate instead of a conv, and
Xception's SeparableConv2D -> BatchNormalization -> ReLU (split into a depthwise and a
pointwise conv, its inner tensor on a learned grid).
"""

import numpy as np
import pytest
import tensorflow as tf
import tf_keras as keras

import tf_bitpruning as tfbp
from tf_bitpruning import costs
from tf_bitpruning.export import export_tflite
from tests.support.litert_run import invoke, output_step, run_tflite
from tests.support.tflite_checks import top1_agreement

pytest.importorskip("ai_edge_litert.interpreter")
L = keras.layers


def _rgb(x):
    return np.repeat(x, 3, axis=-1)


def preprocessing():
    inputs = keras.Input((8, 8, 3))
    x = L.Rescaling(2.0, offset=-1.0)(inputs)
    x = L.Normalization(mean=[0.1, -0.2, 0.0], variance=[0.5, 1.0, 2.0])(x)
    x = L.ReLU()(L.Conv2D(16, 3, padding="same")(x))
    return keras.Model(inputs, L.Dense(10)(L.Flatten()(x)))


def hard_swish():
    """MobileNetV3's hard-swish as keras.applications writes it (TFOpLambda math)."""
    inputs = keras.Input((8, 8, 3))
    x = L.BatchNormalization()(L.Conv2D(16, 3, padding="same")(inputs))
    x = L.Multiply()([x, tf.math.multiply(L.ReLU(6.0)(x + 3.0), 1.0 / 6.0)])
    x = (x - 0.5) / 2.0
    return keras.Model(inputs, L.Dense(10)(L.GlobalAveragePooling2D()(x)))


def activation(name):
    def build():
        inputs = keras.Input((8, 8, 3))
        x = L.BatchNormalization()(L.Conv2D(16, 3, padding="same")(inputs))
        x = L.Activation(tf.nn.relu6 if name == "relu6" else name)(x)
        x = L.ReLU()(L.Conv2D(16, 3, strides=2)(x))
        return keras.Model(inputs, L.Dense(10)(L.Flatten()(x)))
    return build


def squeeze_excite():
    """EfficientNet's squeeze-excite: GAP -> Reshape -> 1x1 conv (swish) -> 1x1 conv (sigmoid) -> Multiply."""
    inputs = keras.Input((8, 8, 3))
    x = L.Activation("swish")(L.BatchNormalization()(L.Conv2D(16, 3, padding="same")(inputs)))
    se = L.Reshape((1, 1, 16))(L.GlobalAveragePooling2D()(x))
    se = L.Conv2D(4, 1, activation="swish")(se)
    se = L.Conv2D(16, 1, activation="sigmoid")(se)
    x = L.Multiply()([x, se])
    return keras.Model(inputs, L.Dense(10)(L.GlobalMaxPooling2D()(x)))


def pooling_concat():
    """DenseNet / Inception patterns: padding, average and max pooling, concatenation,
    BatchNormalization after a Concatenate, an average-pooling transition."""
    inputs = keras.Input((8, 8, 3))
    x = L.ReLU()(L.Conv2D(8, 3)(L.ZeroPadding2D()(inputs)))
    a = L.AveragePooling2D(3, strides=1, padding="same")(x)
    m = L.MaxPooling2D(3, strides=1, padding="same")(x)
    c = L.ReLU()(L.Conv2D(8, 1)(x))
    x = L.Activation("relu")(L.BatchNormalization()(L.Concatenate()([a, m, c])))
    x = L.AveragePooling2D(2)(L.Conv2D(16, 1, use_bias=False)(x))
    return keras.Model(inputs, L.Dense(10)(L.Flatten()(x)))


def bn_after_add():
    """ResNet50V2's pre-activation: Add -> BatchNormalization -> ReLU."""
    inputs = keras.Input((8, 8, 3))
    x = L.Conv2D(16, 3, padding="same")(inputs)
    y = L.Conv2D(16, 3, padding="same")(L.ReLU()(x))
    x = L.ReLU()(L.BatchNormalization()(L.Add()([x, y])))
    return keras.Model(inputs, L.Dense(10)(L.Reshape((-1,))(x)))


MODELS = {
    "preprocessing": preprocessing,
    "hard_swish": hard_swish,
    **{f"activation_{a}": activation(a) for a in ("swish", "sigmoid", "hard_sigmoid", "relu6", "tanh", "gelu")},
    "squeeze_excite": squeeze_excite,
    "pooling_concat": pooling_concat,
    "bn_after_add": bn_after_add,
}


def train_and_freeze(model, digits):
    xtr, ytr = _rgb(digits[0]), digits[1]
    loss = keras.losses.SparseCategoricalCrossentropy(from_logits=True)
    bp = tfbp.bitprune_model(model, regularization=0.05)  # bits fall below 8 within 3 epochs
    bp.compile(keras.optimizers.Adam(3e-3), loss)
    bp.fit(xtr, ytr, epochs=3, batch_size=64, verbose=0)
    frozen = tfbp.freeze_bitlengths(bp)
    frozen.compile(keras.optimizers.Adam(3e-4), loss, metrics=["accuracy"])
    frozen.fit(xtr, ytr, epochs=1, batch_size=64, verbose=0)
    return frozen


@pytest.mark.parametrize("name", ["preprocessing", "hard_swish", "activation_hard_sigmoid", "activation_relu6"])
def test_new_layer_kinds_are_annotated(name):
    """No training: the registry knows every layer (quantized tensors exist, no error)."""
    bp = tfbp.bitprune_model(MODELS[name]())
    names = [t.name for t in costs.quantized_tensors(bp)]
    assert names and not any(n.startswith("quantize_layer") for n in names if name == "preprocessing")


def test_preprocessing_moves_the_input_quantizer():
    bp = tfbp.bitprune_model(preprocessing())
    names = [t.name for t in costs.quantized_tensors(bp)]
    # Rescaling runs in float; Normalization, the end of the chain, quantizes the input.
    assert names[0] == "normalization/activations", names
    assert not any(n.startswith(("quantize_layer", "rescaling")) for n in names), names


def test_unknown_tf_op_names_the_layer_and_the_fix():
    inputs = keras.Input((8,))
    model = keras.Model(inputs, tf.math.cumsum(inputs, axis=1))
    with pytest.raises(ValueError, match=r"(?s)tf\.math\.cumsum.*TFOpLambda 'tf\.math\.cumsum'.*skip_layers"):
        tfbp.bitprune_model(model)


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(MODELS))
def test_layer_kind_exports_and_agrees(name, digits, tmp_path):
    frozen = train_and_freeze(MODELS[name](), digits)
    path = tmp_path / f"{name}.tflite"
    x = _rgb(digits[2])
    # Calibrates what has no learned range: the pre-activation of a Conv2D(activation="swish")
    # and the inner tensors of hard_sigmoid (docs/benchmarks.md, keras.applications coverage).
    export_tflite(frozen, path, representative_dataset=_rgb(digits[0][:64]))
    ref = frozen.predict(x, verbose=0)
    got = run_tflite(path, x)
    a = top1_agreement(got, ref, output_step(path))
    # Top-1 is compared where Keras' top-2 margin exceeds 2 output steps (each output
    # may round one step the other way at a grid midpoint, tests/support/tflite_checks.py).
    # Hidden tensors can round differently too (TFLite rounds an average onto its
    # input grid before requantizing, LOGISTIC has a fixed 1/256 output step), which
    # moves a few outputs further: ≥ 98 % of the decided examples keep their top-1.
    assert a.rate >= 0.98, a
    # Ties: three epochs leave these tiny models with part of the 360 examples within
    # 2 output steps of a tie (up to 30 % seen, gelu); at most 40 % may, so the
    # comparison above always covers ≥ 216 examples.
    assert a.tie_rate <= 0.4, a


@pytest.mark.slow
def test_swish_and_sigmoid_export_without_calibration_and_agree(digits, tmp_path):
    """EfficientNet's squeeze-excite behind a Rescaling. A swish inside a conv now has a
    learned grid before it too, so the file needs no calibration data: with it the
    converter gave that conv's output, kernel and int32 bias grids of its own (its bias
    read 4x too large) and rounded the raw input before the Rescaling (2 % of the
    first tensor a step off). Sigmoids round onto TFLite's 1/256 LOGISTIC grid in Keras
    too: a swish layer's outputs were 0.02-0.4 % a step off, now they are the file's."""
    from tf_bitpruning.export.plan import build_plan

    inputs = keras.Input((8, 8, 3))
    x = L.Rescaling(1.0 / 255.0)(inputs)
    x = L.BatchNormalization()(L.Conv2D(16, 3, padding="same", use_bias=False)(x))
    x = L.Activation("swish", name="swish")(x)
    se = L.Reshape((1, 1, 16))(L.GlobalAveragePooling2D()(x))
    se = L.Conv2D(4, 1, activation="swish", name="se_reduce")(se)
    se = L.Conv2D(16, 1, activation="sigmoid")(se)
    model = keras.Model(inputs, L.Dense(10)(L.Flatten()(L.Multiply()([x, se]))))
    xtr, ytr = _rgb(digits[0]) * 255.0, digits[1]
    bp = tfbp.bitprune_model(model, regularization=0.0, init_bits=6.0)
    bp.compile(keras.optimizers.Adam(1e-3), keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    for i in range(6):
        bp.train_on_batch(xtr[32 * i:32 * (i + 1)], ytr[32 * i:32 * (i + 1)])
    frozen = tfbp.freeze_bitlengths(bp)
    path = tmp_path / "se.tflite"
    export_tflite(frozen, path)  # no representative_dataset: every tensor has a learned grid

    x = (_rgb(digits[2][:128]) * 255.0).astype(np.float32)
    it = invoke(path, x, preserve_all_tensors=True)
    details = {d["name"]: d for d in it.get_tensor_details()}
    # The swish's pre-activation inside se_reduce is on its learned grid in the file.
    (variables,) = [v for _, v in costs.activation_tensors(frozen.get_layer("quant_se_reduce"))
                    if "pre_activation" in v["bits"].name]
    plan = build_plan(frozen)
    conv_out = details["quant_se_reduce/BiasAdd"]
    assert np.isclose(conv_out["quantization"][0], plan.act(variables).step, rtol=1e-5)
    # The swish layer's output: the file's is Keras' (same gate rounding), up to midpoints.
    ref = keras.Model(frozen.inputs, frozen.get_layer("quant_swish").output)(x).numpy()
    out = [d for name, d in details.items() if name.startswith("quant_swish/") and not name.endswith("refined")]
    out = max(out, key=lambda d: d["index"])
    scale, zero = out["quantization"]
    got = (it.get_tensor(out["index"]).astype(np.float64) - zero) * scale
    off = np.abs(got - ref) / scale > 0.5
    assert np.mean(off) <= 2e-4, np.mean(off)


def xception_block():
    """Xception's entry block: Conv-BN-ReLU, then SeparableConv2D -> BN -> ReLU ->
    SeparableConv2D -> BN -> max pooling added to a strided 1x1 conv + BN shortcut; a
    SeparableConv2D with a bias and a fused relu (NASNet-like) before the head."""
    inputs = keras.Input((8, 8, 3))
    x = L.ReLU()(L.BatchNormalization()(L.Conv2D(16, 3, padding="same", use_bias=False, name="stem")(inputs)))
    shortcut = L.BatchNormalization()(L.Conv2D(32, 1, strides=2, use_bias=False, name="shortcut")(x))
    y = L.SeparableConv2D(32, 3, padding="same", use_bias=False, name="block1_sepconv1")(x)
    y = L.ReLU(name="block1_sepconv2_act")(L.BatchNormalization(name="block1_sepconv1_bn")(y))
    y = L.SeparableConv2D(32, 3, padding="same", use_bias=False, name="block1_sepconv2")(y)
    y = L.MaxPooling2D(3, strides=2, padding="same")(L.BatchNormalization(name="block1_sepconv2_bn")(y))
    x = L.Add()([y, shortcut])
    x = L.SeparableConv2D(32, 3, padding="same", activation="relu", name="block2_sepconv")(x)
    return keras.Model(inputs, L.Dense(10, name="logits")(L.GlobalAveragePooling2D()(x)))


@pytest.mark.slow
def test_separable_conv2d_exports_without_calibration_and_agrees(digits, tmp_path):
    """SeparableConv2D runs as <name>_depthwise -> <name>_pointwise, so the tensor between
    its kernels has a learned grid: the file needs no calibration data (the converter
    used to calibrate that tensor at 8 bits, and NASNetMobile's file agreed with Keras on
    97.9 % of top-1), each DEPTHWISE_CONV_2D writes its learned grid, and the file computes
    the Keras model's outputs."""
    from tf_bitpruning.export.plan import build_plan

    xtr, ytr = _rgb(digits[0]), digits[1]
    bp = tfbp.bitprune_model(xception_block(), regularization=0.0, init_bits=6.0)
    assert {"block1_sepconv1_depthwise/activations", "block2_sepconv_pointwise/weights"} <= set(tfbp.bitlengths(bp))
    bp.compile(keras.optimizers.Adam(1e-3), keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    bp.fit(xtr, ytr, epochs=3, batch_size=64, verbose=0)
    frozen = tfbp.freeze_bitlengths(bp)
    path = tmp_path / "xception.tflite"
    export_tflite(frozen, path)  # no representative_dataset: every tensor has a learned grid

    x = _rgb(digits[2]).astype(np.float32)
    it = invoke(path, x, preserve_all_tensors=True)
    details = {d["index"]: d for d in it.get_tensor_details()}
    plan = build_plan(frozen)
    depthwise = [op for op in it._get_ops_details() if op["op_name"] == "DEPTHWISE_CONV_2D"]
    assert len(depthwise) == 3
    for op in depthwise:
        out = details[op["outputs"][0]]
        name = out["name"].split("/")[0]  # quant_<separable conv>_depthwise
        (variables,) = [v for _, v in costs.activation_tensors(frozen.get_layer(name))]
        assert np.isclose(out["quantization"][0], plan.act(variables).step, rtol=1e-5), (name, out["quantization"])
        # On LiteRT's own input of the layer, Keras computes the file's inner tensor (after
        # the op that follows the conv: the clip at the grid's learned min), up to a step
        # where float summation order puts a value on a rounding midpoint (seen: none).
        (clip,) = [o for o in it._get_ops_details() if op["outputs"][0] in o["inputs"]]
        scale, zero = details[op["inputs"][0]]["quantization"]
        inputs = (it.get_tensor(op["inputs"][0]).astype(np.float32) - zero) * scale
        ref = frozen.get_layer(name)(inputs, training=False).numpy()
        scale, zero = details[clip["outputs"][0]]["quantization"]
        got = (it.get_tensor(clip["outputs"][0]).astype(np.float64) - zero) * scale
        steps = np.abs(got - ref) / scale
        assert steps.max() <= 1.0 + 1e-3 and np.mean(steps > 0.5) <= 2e-4, (name, steps.max(), np.mean(steps > 0.5))

    ref = frozen.predict(x, verbose=0)
    got = it.get_tensor(it.get_output_details()[0]["index"])
    a = top1_agreement(got, ref, output_step(path))
    # Top-1 is compared where Keras' top-2 margin exceeds 2 output steps (each output may
    # round a step the other way at a grid midpoint, tests/support/tflite_checks.py). Hidden
    # tensors round the other way at midpoints too (the int32 bias grid,
    # tests/test_export_agreement.py), which moves a few outputs a second step (seen:
    # 2 of 360, never more than 2 steps) and could swap a top-1 only within 4 steps of a
    # tie: ≥ 99 % of the decided examples keep it, ≤ 2 % of the examples move > 1 step.
    assert a.rate >= 0.99 and a.off_grid_rate <= 0.02, a
    # Ties: three epochs at 6 bits left none of the 360 examples within 2 output steps of
    # a tie; at most 40 % may (as for the other layer kinds), so ≥ 216 are compared.
    assert a.tie_rate <= 0.4, a


@pytest.mark.slow  # (an export: ~7 s)
def test_representative_dataset_leaves_float_preprocessing_float(digits, tmp_path):
    """Data given to a model whose every tensor has a learned grid is not used: the
    converter would calibrate the float Rescaling before the input quantizer into int8
    MUL and ADD ops on grids of their own, rounding twice where Keras rounds once (16 %
    of the first tensor of the transfer-learning recipe a step off, 1.3 % of its decided
    inputs another class under Keras 3). The file quantizes the Rescaling's float output
    once, onto the learned grid."""
    from tensorflow.lite.tools import flatbuffer_utils

    from tf_bitpruning.export.plan import build_plan

    inputs = keras.Input((8, 8, 3))
    x = L.Rescaling(1 / 127.5, offset=-1.0, name="rescale")(inputs)
    model = keras.Model(inputs, L.Dense(10)(L.Flatten()(L.Conv2D(4, 3)(x))))
    xtr = _rgb(digits[0][:64]) * 255.0
    bp = tfbp.bitprune_model(model, regularization=0.0, init_bits=6.0)
    bp.compile(keras.optimizers.Adam(1e-3), keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    bp.train_on_batch(xtr[:32], digits[1][:32])
    frozen = tfbp.freeze_bitlengths(bp)
    path = tmp_path / "rescale.tflite"
    export_tflite(frozen, path, representative_dataset=xtr)
    model_obj = flatbuffer_utils.read_model(str(path))
    sg = model_obj.subgraphs[0]
    names = [flatbuffer_utils.opcode_to_name(model_obj, op.opcodeIndex) for op in sg.operators]
    first = names.index("QUANTIZE")
    assert names[:first] == ["MUL", "ADD"], names  # the Rescaling, in float
    assert all(sg.tensors[i].type == 0 for op in sg.operators[:first] for i in op.outputs)  # FLOAT32
    (variables,) = [v for _, v in costs.activation_tensors(frozen.get_layer("quant_rescale"))]
    grid = build_plan(frozen).act(variables)
    quantized = sg.tensors[sg.operators[first].outputs[0]].quantization
    assert np.isclose(quantized.scale[0], grid.step, rtol=1e-5), (quantized.scale, grid.step)
