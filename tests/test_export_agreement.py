"""Where a .tflite file and its Keras model part, one source at a time (issue 8).

Each test isolates one place where the exporter used to round a tensor
differently from Keras, on a tiny model trained a few steps at 5 bits, and checks
it in integers against LiteRT's own input to the op (a step apart only at a grid
midpoint), so the checks do not depend on the CPU that trained the model:

- a global average pooling ran MEAN on its input's grid and requantized (two roundings);
- calibration data gave the float input a grid of its own (two roundings);
- XNNPACK's int8 -> int8 QUANTIZE requantizes with an 8-bit multiplier;
- a BatchNormalization without a kernel (after a concatenation) had a coarse int32 bias grid.

What is *not* a source, measured per layer on keras.applications models and
stand-ins (Keras run on LiteRT's own inputs of each layer): residual adds and a
BatchNormalization after an add (exact). The one difference that remains is
TFLite's int32 bias grid of kernel layers (input step × weight step, made finer by
``fine_bias``): outputs within ~1e-3 of a step from a grid midpoint round the other
way, 1e-4 to 5e-4 of a layer's elements, and those one-step flips multiply with depth.
"""

import numpy as np
import pytest
import tensorflow as tf
import tf_keras as keras

import tf_bitpruning as tfbp
from tf_bitpruning import costs
from tf_bitpruning.export import export_tflite
from tf_bitpruning.export.plan import build_plan
from tests.support.litert_run import invoke

pytest.importorskip("ai_edge_litert.interpreter")
L = keras.layers
pytestmark = pytest.mark.slow  # trains (a few steps) and exports; ~1 minute for the module on 2 cores


def _rgb(x):
    return np.repeat(x, 3, axis=-1).astype(np.float32)


def _frozen(model, digits, steps=8):
    """A few Adam steps at 5 bits everywhere (ranges and BN statistics move), frozen."""
    xtr, ytr = _rgb(digits[0]), digits[1]
    bp = tfbp.bitprune_model(model, regularization=0.0, init_bits=5.0)
    bp.compile(keras.optimizers.Adam(1e-3), keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    for i in range(steps):
        bp.train_on_batch(xtr[32 * i:32 * (i + 1)], ytr[32 * i:32 * (i + 1)])
    return tfbp.freeze_bitlengths(bp)


def _run(path, x):
    return invoke(path, x, preserve_all_tensors=True)


def _ops(it, name):
    return [op for op in it._get_ops_details() if op["op_name"] == name]


def _real(it, index):
    """A tensor's values and (scale, zero point)."""
    detail = {d["index"]: d for d in it.get_tensor_details()}[index]
    scale, zero = detail["quantization"]
    return (it.get_tensor(index).astype(np.float64) - zero) * scale, scale


def _act_spec(frozen, plan, name):
    layer = frozen.get_layer(name)
    for t in costs.quantized_tensors(frozen):
        if t.wrapper == name and t.kind == "activations":
            return plan.act(t.variables)
    raise AssertionError(f"no activation quantizer on {name} ({layer})")


def test_global_average_pooling_rounds_once_onto_its_grid(digits, tmp_path):
    """GAP of ReLU outputs: TFLite ran MEAN on its input's (coarser) grid, then a RELU
    requantized it onto the pooling's grid: two roundings, 80 % of the outputs of a
    12-block residual stack's pooling off by up to 3 steps. Now MEAN writes the
    pooling's grid directly: LiteRT's MEAN output is its input's mean rounded once."""
    inputs = keras.Input((8, 8, 3))
    x = L.ReLU()(L.Conv2D(16, 3, padding="same")(inputs))
    x = L.GlobalAveragePooling2D(name="gap")(x)
    frozen = _frozen(keras.Model(inputs, L.Dense(10)(x)), digits)
    path = tmp_path / "gap.tflite"
    export_tflite(frozen, path)
    x = _rgb(digits[2][:64])
    it = _run(path, x)
    (mean,) = _ops(it, "MEAN")
    assert not [op for op in it._get_ops_details() if mean["outputs"][0] in op["inputs"]
                and op["op_name"] in ("RELU", "MAXIMUM")], "a clip after MEAN rounds a second time"
    values, in_scale = _real(it, mean["inputs"][0])
    got, out_scale = _real(it, mean["outputs"][0])
    spec = _act_spec(frozen, build_plan(frozen), "quant_gap")
    assert np.isclose(out_scale, spec.step, rtol=1e-5), (out_scale, spec.step, in_scale)
    want = spec.lo + spec.step * np.clip(np.round((values.mean(axis=(1, 2)) - spec.lo) / spec.step),
                                         0, 2 ** spec.bits - 1)
    steps = np.abs(got - want) / spec.step
    assert steps.max() <= 1.0 + 1e-6 and np.mean(steps > 0.5) <= 0.002, (np.mean(steps > 0.5), steps.max())


def test_global_average_pooling_with_a_clip_rounds_once_onto_its_grid(digits, tmp_path):
    """A GAP whose grid starts above its input's (EfficientNet's squeeze of swish
    outputs): TFLite ran MEAN on its input's grid, then the clip requantized onto the
    pooling's, 19x finer in EfficientNetB0 (94 % of the squeeze's outputs off, by up
    to 10 steps). Now MEAN writes the pooling's grid and the clip follows in int8."""
    inputs = keras.Input((8, 8, 3))
    x = L.Conv2D(16, 3, padding="same")(inputs)           # linear: its grid reaches below 0
    x = L.GlobalAveragePooling2D(name="gap")(x)
    frozen = _frozen(keras.Model(inputs, L.Dense(10)(x)), digits)
    (gap,) = [t for t in costs.quantized_tensors(frozen) if t.wrapper == "quant_gap" and t.kind == "activations"]
    gap.variables["min"].assign(0.0)                       # the pooling's grid starts at 0: a clip
    plan = build_plan(frozen)
    spec = _act_spec(frozen, plan, "quant_gap")
    assert spec.lo == 0.0 and plan.lower_bound["quant_gap"] < 0.0
    path = tmp_path / "gap_clip.tflite"
    export_tflite(frozen, path)
    it = _run(path, _rgb(digits[2][:64]))
    (mean,) = _ops(it, "MEAN")
    values, _ = _real(it, mean["inputs"][0])
    _, mean_scale = _real(it, mean["outputs"][0])
    assert np.isclose(mean_scale, spec.step, rtol=1e-5), (mean_scale, spec.step)
    (clip,) = [op for op in it._get_ops_details() if mean["outputs"][0] in op["inputs"] and op["op_name"] != "DELEGATE"]
    got, _ = _real(it, clip["outputs"][0])
    want = spec.lo + spec.step * np.clip(np.round((values.mean(axis=(1, 2)) - spec.lo) / spec.step),
                                         0, 2 ** spec.bits - 1)
    steps = np.abs(got - want) / spec.step
    assert steps.max() <= 1.0 + 1e-6 and np.mean(steps > 0.5) <= 0.002, (np.mean(steps > 0.5), steps.max())


def test_global_average_pooling_of_one_element_keeps_its_requantization(digits, tmp_path):
    """Over a 1x1 map TFLite drops the MEAN; the pooling's own grid (a requantization of
    its input) must stay (Keras rounds onto it): the file's next conv reads a tensor
    on the pooling's grid."""
    inputs = keras.Input((2, 2, 3))
    x = L.ReLU()(L.Conv2D(16, 2)(inputs))                  # 1x1
    x = L.GlobalAveragePooling2D(name="gap", keepdims=True)(x)
    x = L.Conv2D(10, 1, name="head")(x)
    frozen = _frozen(keras.Model(inputs, L.Flatten()(x)), [d[:, ::4, ::4] if np.ndim(d) == 4 else d
                                                           for d in digits])
    path = tmp_path / "gap1.tflite"
    export_tflite(frozen, path, fine_bias=False)
    it = _run(path, _rgb(digits[2][:16, ::4, ::4]))
    head = [op for op in _ops(it, "CONV_2D") if op["inputs"][1] >= 0][-1]
    _, scale = _real(it, head["inputs"][0])
    spec = _act_spec(frozen, build_plan(frozen), "quant_gap")
    assert np.isclose(scale, spec.step, rtol=1e-5), (scale, spec.step)


def test_calibration_data_does_not_round_the_input_twice(digits, tmp_path):
    """With representative_dataset the converter calibrated the float input (to 1/255
    on [0, 1] digits) and then requantized it onto the learned grid: 3 % of the
    input elements a step off. Now the file's QUANTIZE writes the learned grid, and the
    file is the same function with or without calibration data."""
    inputs = keras.Input((8, 8, 3))
    x = L.ReLU()(L.Conv2D(8, 3, padding="same")(inputs))
    frozen = _frozen(keras.Model(inputs, L.Dense(10)(L.Flatten()(x))), digits)
    plain, calibrated = tmp_path / "plain.tflite", tmp_path / "calibrated.tflite"
    export_tflite(frozen, plain)
    export_tflite(frozen, calibrated, representative_dataset=_rgb(digits[0][:64]))
    x = _rgb(digits[2][:128])
    outputs = []
    for path in (plain, calibrated):
        it = _run(path, x)
        quantize = _ops(it, "QUANTIZE")[0]
        assert quantize["inputs"][0] == it.get_input_details()[0]["index"]
        got, scale = _real(it, quantize["outputs"][0])
        spec = _act_spec(frozen, build_plan(frozen), "quantize_layer")
        assert np.isclose(scale, spec.step, rtol=1e-5), (path.name, scale, spec.step)
        want = spec.lo + spec.step * np.clip(np.round((x - spec.lo) / spec.step), 0, 2 ** spec.bits - 1)
        assert np.mean(np.abs(got.clip(spec.lo) - want) > spec.step / 2) <= 1e-3, path.name
        outputs.append(it.get_tensor(it.get_output_details()[0]["index"]))
    np.testing.assert_array_equal(outputs[0], outputs[1])


def _dense_block(digits):
    """DenseNet's pattern: a conv output read twice (so quantized), a concatenation of
    it with a new conv's output, a BatchNormalization after the concatenation; BN
    statistics set far from their initial values (as a trained network has them)."""
    inputs = keras.Input((8, 8, 3))
    x = L.Conv2D(16, 3, padding="same", use_bias=False)(inputs)
    y = L.ReLU()(L.BatchNormalization(name="bn_a")(x))
    y = L.Conv2D(8, 3, padding="same", use_bias=False)(y)
    x = L.Concatenate()([x, y])
    x = L.ReLU()(L.BatchNormalization(name="bn_b")(x))
    model = keras.Model(inputs, L.Dense(10)(L.GlobalAveragePooling2D()(x)))
    rng = np.random.default_rng(0)
    for name in ("bn_a", "bn_b"):
        bn = model.get_layer(name)
        n = bn.gamma.shape[0]
        bn.set_weights([rng.uniform(0.5, 2.0, n), rng.normal(0.0, 0.5, n), rng.normal(0.0, 0.3, n),
                        rng.uniform(0.2, 2.0, n)])
    return _frozen(model, digits, steps=4)


def _identity_conv(it, detail, inputs) -> bool:
    """A 1x1 DEPTHWISE_CONV_2D of one code per filter (k, step 1/k) and no bias: the
    exporter's exact change of grid (graph.identity_depthwise)."""
    if len(inputs) < 3 or list(detail[inputs[1]]["shape"][:3]) != [1, 1, 1]:
        return False
    codes, scales = it.get_tensor(inputs[1]), detail[inputs[1]]["quantization_parameters"]["scales"]
    return (len(np.unique(codes)) == 1 and not it.get_tensor(inputs[2]).any()
            and np.allclose(codes.reshape(-1) * scales, 1.0, rtol=1e-6))


def _requantizations(it):
    """(input codes, input (scale, zero), output codes, output (scale, zero)) of every
    op that only changes an int8 tensor's grid: QUANTIZE, MUL by the constant one, or
    an identity depthwise conv."""
    detail = {d["index"]: d for d in it.get_tensor_details()}
    found = []
    for op in it._get_ops_details():
        inputs = [i for i in op["inputs"] if i >= 0]
        if op["op_name"] == "QUANTIZE" or (op["op_name"] == "MUL" and detail[inputs[1]]["name"] == "tf_bitpruning/one") \
                or (op["op_name"] == "DEPTHWISE_CONV_2D" and _identity_conv(it, detail, inputs)):
            src, dst = detail[inputs[0]], detail[op["outputs"][0]]
            if src["dtype"] == np.int8 and dst["dtype"] == np.int8:
                found.append((it.get_tensor(src["index"]).astype(np.int64), src["quantization"],
                              it.get_tensor(dst["index"]).astype(np.int64), dst["quantization"]))
    return found


def test_changes_of_grid_round_exactly(digits, tmp_path):
    """A concatenation input on another grid is requantized onto the concatenation's.
    As an int8 -> int8 QUANTIZE, LiteRT's default (XNNPACK) kernel multiplies by
    ``round(256 · ratio) / 256``: 0.3-0.9 % of the values land a step off; onto a grid
    more than twice as coarse it rounds twice (an identity depthwise conv there). Every
    change of grid in the file now rounds the exact value."""
    frozen = _dense_block(digits)
    path = tmp_path / "dense.tflite"
    export_tflite(frozen, path)
    it = _run(path, _rgb(digits[2][:64]))
    checked = 0
    for q_in, (s_in, z_in), q_out, (s_out, z_out) in _requantizations(it):
        ratio = s_in / s_out
        want = np.clip(np.floor((q_in - z_in) * ratio + 0.5) + z_out, -128, 127)
        wrong = np.mean(q_out != want)
        assert wrong <= 1e-3, (ratio, wrong)
        checked += abs(np.log2(ratio) - np.round(np.log2(ratio))) > 1e-6
    assert checked >= 1  # the concatenation's input (not a power-of-two refinement)


def test_batch_normalization_without_a_kernel_rounds_like_keras(digits, tmp_path):
    """A BatchNormalization after a concatenation runs as a 1x1 depthwise conv whose
    int32 bias sits on the grid input step × filter step. With the factor's code at 127
    that grid is up to a fifth of an output step wide, and rounding the BN offset onto
    it put 1.4 % of a DenseNet-like stack's outputs a step off; each channel's code is
    now chosen so the offset falls (nearly) on the grid."""
    frozen = _dense_block(digits)
    path = tmp_path / "dense.tflite"
    export_tflite(frozen, path, fine_bias=False)
    it = _run(path, _rgb(digits[2][:64]))
    plan = build_plan(frozen)
    detail = {d["index"]: d for d in it.get_tensor_details()}
    checked = 0
    for op in _ops(it, "DEPTHWISE_CONV_2D"):
        if list(detail[op["inputs"][1]]["shape"][:3]) != [1, 1, 1] \
                or _identity_conv(it, detail, [i for i in op["inputs"] if i >= 0]):
            continue
        x, _ = _real(it, op["inputs"][0])
        q_out = it.get_tensor(op["outputs"][0]).astype(np.int64)
        s_out, z_out = detail[op["outputs"][0]]["quantization"]
        for m, c, *_ in plan.unfolded_bn.values():
            if m.size != x.shape[-1]:
                continue
            bias = it.get_tensor(op["inputs"][2]).astype(np.float64)
            bias_scale = detail[op["inputs"][2]]["quantization_parameters"]["scales"].astype(np.float64)
            s_in = detail[op["inputs"][0]]["quantization"][0]
            error = np.abs(bias * bias_scale - c)
            unit = s_in * np.abs(m) / 127.0   # the bias grid with every code at 127
            error_127 = np.abs(c - np.round(c / unit) * unit)
            # Rounding onto a grid chosen per channel: a fraction of the error at 127.
            assert error.mean() <= 0.25 * error_127.mean(), (error.mean(), error_127.mean())
            y = np.maximum(x * m + c, 0.0)  # BN, then the ReLU fused into the op
            want = np.clip(np.floor(y / s_out + 0.5) + z_out, -128, 127)
            wrong = np.mean(q_out != want)
            assert wrong <= 2e-3, wrong
            checked += 1
    assert checked == 2


def test_pooling_read_by_a_concatenation_and_a_bn_stays_on_its_grid(digits, tmp_path):
    """DenseNet's stem: conv -> ReLU -> padding -> max pooling, read by a
    BatchNormalization and by a concatenation. The concatenation's change of grid was
    moved by the converter to before the pooling (a same-scale op), so the BN read the
    pooling on the concatenation's grid: 23 % of DenseNet121's first BN outputs a step
    off. The BN's depthwise conv now reads the pooling on the ReLU's grid."""
    inputs = keras.Input((8, 8, 3))
    x = L.ReLU()(L.Conv2D(16, 3, padding="same")(inputs))
    x = L.MaxPooling2D(3, strides=2)(L.ZeroPadding2D()(x))
    y = L.ReLU()(L.BatchNormalization(name="bn")(x))
    y = L.Conv2D(8, 3, padding="same", use_bias=False)(y)
    x = L.Concatenate()([x, y])
    frozen = _frozen(keras.Model(inputs, L.Dense(10)(L.GlobalAveragePooling2D()(x))), digits)
    path = tmp_path / "stem.tflite"
    export_tflite(frozen, path)
    it = _run(path, _rgb(digits[2][:16]))
    plan = build_plan(frozen)
    detail = {d["index"]: d for d in it.get_tensor_details()}
    (bn,) = [op for op in _ops(it, "DEPTHWISE_CONV_2D") if op["outputs"][0] >= 0
             and "quant_bn" in detail[op["inputs"][1]]["name"]]
    scale = detail[bn["inputs"][0]]["quantization"][0]
    assert np.isclose(scale, plan.depthwise_input["quant_bn"].step, rtol=1e-5), scale


def test_inception_branch_pooling_rounds_once_onto_its_grid(digits, tmp_path):
    """InceptionV3's mixed block: a max pooling read by 1x1 convs and by a 3x3 stride-1
    'same' average pooling. The convs were left in float (the converter gave them a
    DEQUANTIZE of the max pooling: ExportError, and with calibration data 4 % agreement
    on InceptionV3), and TFLite's AVERAGE_POOL_2D rounded onto its input's grid before
    the pooling's own (32 % of a branch pooling's outputs a step off). Now the file is
    integer and the pooling (depthwise convs, one per band of border windows) rounds
    LiteRT's input to it once, onto its grid, averaging the border windows over what
    they cover as TensorFlow does."""
    inputs = keras.Input((8, 8, 3))
    x = L.ReLU()(L.Conv2D(8, 3, padding="same")(inputs))
    x = L.MaxPooling2D(2, name="stem_pool")(x)
    a = L.ReLU()(L.Conv2D(4, 1)(x))
    b = L.AveragePooling2D(3, strides=1, padding="same", name="pool")(x)
    b = L.ReLU()(L.Conv2D(4, 1)(b))
    x = L.Concatenate()([a, b])
    frozen = _frozen(keras.Model(inputs, L.Dense(10)(L.GlobalAveragePooling2D()(x))), digits)
    path = tmp_path / "inception.tflite"
    export_tflite(frozen, path)
    it = _run(path, _rgb(digits[2][:64]))
    assert not _ops(it, "AVERAGE_POOL_2D") and not _ops(it, "DEQUANTIZE")[:-1]
    (maxpool,) = _ops(it, "MAX_POOL_2D")
    values, _ = _real(it, maxpool["outputs"][0])
    spec = _act_spec(frozen, build_plan(frozen), "quant_pool")
    # The pooling's output: the concatenation of its bands (nothing after it rounds again).
    pool_out = _ops(it, "CONCATENATION")[-2]["outputs"][0]
    assert [op["op_name"] for op in it._get_ops_details()
            if pool_out in op["inputs"] and op["op_name"] != "DELEGATE"] == ["QUANTIZE"]  # fine_bias
    got, scale = _real(it, pool_out)
    assert np.isclose(scale, spec.step, rtol=1e-5), (scale, spec.step)
    mean = tf.nn.avg_pool2d(values, 3, 1, "SAME").numpy()
    want = spec.lo + spec.step * np.clip(np.round((mean - spec.lo) / spec.step), 0, 2 ** spec.bits - 1)
    steps = np.abs(got - want) / spec.step
    assert steps.max() <= 1.0 + 1e-6 and np.mean(steps > 0.5) <= 0.002, (np.mean(steps > 0.5), steps.max())
