"""Raw ``keras.ops`` calls in a Keras 3 model (``x + 3.0``: tf_keras' ``TFOpLambda``), and
the export twin's input quantizers (issue 19, item 4)."""

import keras as keras3
import numpy as np
import pytest
import tf_keras

import tf_bitpruning as tfbp
from tf_bitpruning import costs
from tf_bitpruning.keras3.bridge import to_tf_keras
from tf_bitpruning.keras3.ops import KerasOpLambda


def hard_swish_net(keras):
    """MobileNetV3's pieces, written the same way in both Kerases: the input padded first
    (ResNet50V2, DenseNet121), hard sigmoid as raw math ``ReLU(6)(x + 3) * (1/6)`` (a
    ``TFOpLambda`` in tf_keras, bare ``keras.ops`` in Keras 3), a squeeze-excite Multiply."""
    L = keras.layers
    inputs = keras.Input((8, 8, 1))
    x = L.BatchNormalization()(L.Conv2D(8, 3, use_bias=False)(L.ZeroPadding2D(1)(inputs)))
    x = L.Multiply()([x, L.ReLU(6.0)(x + 3.0) * (1.0 / 6.0)])
    y = L.ReLU()(L.BatchNormalization()(L.DepthwiseConv2D(3, padding="same")(x)))
    x = L.GlobalAveragePooling2D()(L.Add()([x, y]))
    return keras.Model(inputs, L.Dense(10)(x))


def _kinds(model):
    return sorted(t.kind for t in costs.quantized_tensors(model))


def test_raw_ops_become_op_lambda_layers():
    """x + 3 and * (1/6) become KerasOpLambda layers naming TFOpLambda's functions; the add
    feeds ReLU(6), which re-quantizes it, so only the multiply's output has a grid."""
    inputs = keras3.Input((4, 4, 2))
    x = keras3.layers.Conv2D(2, 1)(inputs)
    x = keras3.ops.reshape(keras3.layers.ReLU(6.0)(x + 3.0) * (1.0 / 6.0), (-1, 32))
    bp = tfbp.bitprune_model(keras3.Model(inputs, keras3.layers.Dense(3)(x)))
    lifted = {op.function: op for op in (getattr(layer, "layer", layer) for layer in bp.layers)
              if isinstance(op, KerasOpLambda)}
    assert sorted(lifted) == ["math.add", "math.multiply", "reshape"]
    assert not hasattr(bp.get_layer(lifted["reshape"].name), "quantize_config")  # passed through, unwrapped
    bits = tfbp.bitlengths(bp)
    assert f"{lifted['math.multiply'].name}/activations" in bits and f"{lifted['math.add'].name}/activations" not in bits
    x = np.random.RandomState(0).rand(2, 4, 4, 2).astype("float32")
    assert bp(x).shape == (2, 3)


def test_raw_ops_in_a_nested_model():
    """A backbone with raw math, nested in the model: flattened, then lifted."""
    L = keras3.layers
    inputs = keras3.Input((4,))
    inner = keras3.Model(inputs, L.ReLU(6.0)(L.Dense(4)(inputs) + 3.0) * (1.0 / 6.0), name="inner")
    outer_inputs = keras3.Input((4,))
    bp = tfbp.bitprune_model(keras3.Model(outer_inputs, L.Dense(2, name="head")(inner(outer_inputs))))
    lifted = [layer.layer.function for layer in bp.layers if isinstance(getattr(layer, "layer", None), KerasOpLambda)]
    assert sorted(lifted) == ["math.add", "math.multiply"]
    assert bp(np.ones((3, 4), "float32")).shape == (3, 2)


@pytest.mark.slow
def test_raw_ops_are_quantized_as_tf_keras_op_lambdas():
    """The same tensors are quantized under both Kerases, the raw ops' among them; the
    twin (before the fix: no input quantizer before the padding, refused) is the model."""
    ours = tfbp.bitprune_model(hard_swish_net(keras3))
    theirs = tfbp.bitprune_model(hard_swish_net(tf_keras))
    lifted = {layer.layer.function: layer.layer.name for layer in ours.layers
              if isinstance(getattr(layer, "layer", None), KerasOpLambda)}
    assert sorted(lifted) == ["math.add", "math.multiply"]
    assert _kinds(ours) == _kinds(theirs)
    # x + 3 feeds ReLU(6), which re-quantizes it: only the * (1/6) output has a grid, in both.
    ours_bits, theirs_bits = tfbp.bitlengths(ours), tfbp.bitlengths(theirs)
    assert f"{lifted['math.multiply']}/activations" in ours_bits and "tf.math.multiply/activations" in theirs_bits
    assert f"{lifted['math.add']}/activations" not in ours_bits
    assert not any(name.startswith("tf.__operators__.add") for name in theirs_bits)
    assert "quantize_layer/activations" in tfbp.bitlengths(ours)
    twin = to_tf_keras(ours)  # checks the twin's outputs against the model's
    assert len(costs.quantized_tensors(twin)) == len(costs.quantized_tensors(ours))


def test_an_input_read_only_by_a_skipped_layer_is_not_quantized():
    """As under tfmot: an input gets a quantizer only before a layer that is bit-pruned."""
    for keras in (keras3, tf_keras):
        L = keras.layers
        inputs = keras.Input((6,))
        model = keras.Model(inputs, L.Dense(3, name="head")(L.Dense(4, name="first")(inputs)))
        bits = tfbp.bitlengths(tfbp.bitprune_model(model, skip_layers=["first"]))
        assert "quantize_layer/activations" not in bits and "head/weights" in bits, (keras.__name__, bits)


@pytest.mark.slow
def test_raw_ops_save_and_load(tmp_path):
    bp = tfbp.bitprune_model(hard_swish_net(keras3))
    x = np.random.RandomState(0).rand(4, 8, 8, 1).astype("float32")
    path = str(tmp_path / "bp.keras")
    bp.save(path)
    np.testing.assert_allclose(keras3.saving.load_model(path)(x), bp(x), atol=1e-6)


def test_raw_ops_that_cannot_be_bit_pruned_are_refused_by_name():
    L, ops = keras3.layers, keras3.ops

    def refused(make, match):
        inputs = keras3.Input((4,))
        with pytest.raises(ValueError, match=match):
            tfbp.bitprune_model(keras3.Model(inputs, L.Dense(2)(make(inputs))))

    refused(lambda x: ops.hard_sigmoid(x), r"op 'hard_sigmoid' \(HardSigmoid\).*no TFOpLambda counterpart.*"
                                           r"Use a layer")
    refused(lambda x: ops.add(x, L.Dense(4)(x)), r"'add.*' \(Add\) is called on 2 tensors.*keras.layers.Add")
    refused(lambda x: 1.0 - x, r"'subtract.*' \(Subtract\) has its tensor as operand 2; write the constant second")


class _Outputs:
    """Stands in for a model in check_twin: fixed outputs."""
    name = "m"

    def __init__(self, outputs):
        self.outputs = outputs

    def __call__(self, inputs, training=False):
        return self.outputs


def test_the_twin_check_refuses_other_semantics_not_one_rounding_flip():
    """ResNet50V2's twin was refused for one probe input whose outputs a midpoint flip, amplified
    by depth, moved 1.0 % of the range; a layer with other semantics moves most inputs."""
    from tf_bitpruning.keras3.bridge import check_twin

    ours = np.linspace(0.0, 1.0, 120).reshape(12, 10)
    one_flip = ours.copy()
    one_flip[3] += 0.02
    check_twin(_Outputs(ours), _Outputs(one_flip), None)
    with pytest.raises(RuntimeError, match=r"computes other outputs \(\d+% of the probe inputs"):
        check_twin(_Outputs(ours), _Outputs(ours * 1.05), None)
