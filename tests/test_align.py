"""align_to_tflite: the Keras model adds the biases its file adds (int32 grid)."""

import numpy as np
import pytest
import tf_keras as keras
from tensorflow.lite.tools import flatbuffer_utils

import tf_bitpruning as tfbp
from tests.support.litert_run import output_step, run_tflite
from tests.support.tflite_checks import top1_agreement

L = keras.layers

pytestmark = pytest.mark.slow  # trains, exports and runs LiteRT


def _model():
    """A folded conv -> BN, a conv with its own bias, a BN alone (after an Add: a 1x1
    depthwise conv in the file) and a dense layer: every way a bias reaches the file."""
    inputs = keras.Input((8, 8, 1))
    x = L.ReLU()(L.BatchNormalization(name="bn_folded")(L.Conv2D(8, 3, padding="same", use_bias=False,
                                                                  name="conv_bn")(inputs)))
    y = L.Conv2D(8, 3, padding="same", activation="relu", name="conv_bias")(x)
    z = L.BatchNormalization(name="bn_alone")(L.Add()([x, y]))
    return keras.Model(inputs, L.Dense(10, name="head")(L.GlobalAveragePooling2D()(L.ReLU()(z))))


def _biases(path):
    """The values the file's biases add (int32 code × scale): a channel's code multiplier
    may differ between two exports of equal values (a bias on the grids of two)."""
    model_obj = flatbuffer_utils.read_model(str(path))
    sg = model_obj.subgraphs[0]
    found = []
    for op in sg.operators:
        if len(op.inputs) > 2 and op.inputs[2] >= 0:
            t = sg.tensors[op.inputs[2]]
            codes = np.frombuffer(bytes(model_obj.buffers[t.buffer].data), np.int32)
            found.append(codes * np.asarray(t.quantization.scale, np.float64))
    return found


@pytest.fixture(scope="module")
def exported(digits, tmp_path_factory):
    keras.utils.set_random_seed(0)  # module scope: before the per-test seed
    bp = tfbp.bitprune_model(_model(), regularization=0.0, init_bits=4.0)
    bp.compile(keras.optimizers.Adam(1e-2), keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    bp.fit(digits[0], digits[1], batch_size=64, epochs=2, verbose=0)
    frozen = tfbp.freeze_bitlengths(bp)
    path = tmp_path_factory.mktemp("align") / "m.tflite"
    tfbp.export_tflite(frozen, path, align=False)  # the model as trained: align_to_tflite moves it
    return frozen, path


def test_keras_adds_what_the_file_adds(exported, digits):
    frozen, path = exported
    x = digits[2]
    got, before = run_tflite(path, x), frozen.predict(x, verbose=0)
    moved = tfbp.align_to_tflite(frozen, path)
    # Every bias the file adds: the folded BN's beta, the conv's and dense's bias, the lone BN's beta.
    assert set(moved) == {"quant_conv_bn", "quant_conv_bias", "quant_bn_alone", "quant_head"}
    assert max(moved.values()) <= 0.5 + 1e-3 and max(moved.values()) > 0.05  # half a bias step at most
    after = frozen.predict(x, verbose=0)
    step = output_step(path)
    assert float(after.max() - after.min()) > 10 * step, "constant logits: the comparison would say nothing"
    # Float rounding aside, Keras and the file now compute the same integers: a value within
    # float error of a midpoint can still round apart, so a few elements are allowed.
    off = np.abs(got - after) > 0.5 * step
    assert off.mean() <= 1e-3, (off.mean(), float(np.mean(np.abs(got - before) > 0.5 * step)))
    # Aligned again, nothing moves beyond float rounding, and the file it exports adds the same.
    again = tfbp.align_to_tflite(frozen, path)
    assert max(again.values()) <= 0.01, again
    path2 = path.parent / "again.tflite"
    tfbp.export_tflite(frozen, path2)
    for a, b in zip(_biases(path), _biases(path2)):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-9)


def test_a_file_of_another_model_is_refused(exported, digits, tmp_path):
    frozen, path = exported
    other = tfbp.bitprune_model(keras.Sequential([keras.Input((8, 8, 1)), L.Flatten(), L.Dense(3, name="head")]))
    other.compile("adam", "mse")
    other.fit(digits[0][:64], np.zeros((64, 3)), verbose=0)
    other = tfbp.freeze_bitlengths(other)
    with pytest.raises(ValueError, match="'quant_head' has 3 biases, the file 10"):
        tfbp.align_to_tflite(other, path)


def test_a_file_of_this_model_before_more_training_is_refused(digits, tmp_path):
    """Exported, then trained further: the file's biases are many grid steps from the
    model's, so aligning onto them would undo the training: refused, the model unchanged."""
    keras.utils.set_random_seed(0)
    bp = tfbp.bitprune_model(_model(), regularization=0.0, init_bits=4.0)
    loss = keras.losses.SparseCategoricalCrossentropy(from_logits=True)
    bp.compile(keras.optimizers.Adam(1e-2), loss)
    bp.fit(digits[0], digits[1], batch_size=64, epochs=1, verbose=0)
    frozen = tfbp.freeze_bitlengths(bp)
    path = tmp_path / "old.tflite"
    tfbp.export_tflite(frozen, path)
    frozen.compile(keras.optimizers.Adam(1e-2), loss)
    frozen.fit(digits[0], digits[1], batch_size=64, epochs=1, verbose=0)
    weights = [w.copy() for w in frozen.get_weights()]
    with pytest.raises(ValueError, match=r"was not exported from .* as it is now.*export again after training"):
        tfbp.align_to_tflite(frozen, path)
    for a, b in zip(weights, frozen.get_weights()):
        np.testing.assert_array_equal(a, b)


def _hard_swish_cnn(keras):
    """MobileNetV3's pieces at digits' size: conv-BN-hard swish with hard sigmoid as raw
    math (``TFOpLambda`` in tf_keras, bare ``keras.ops`` in Keras 3), a depthwise
    conv-BN-ReLU added back, a Dense head: biases of every kind (folded BN, lone BN, Dense)."""
    L = keras.layers
    inputs = keras.Input((8, 8, 1))
    x = L.BatchNormalization(momentum=0.9)(L.Conv2D(16, 3, padding="same", use_bias=False)(inputs))
    x = L.Multiply()([x, L.ReLU(6.0)(x + 3.0) * (1.0 / 6.0)])
    y = L.DepthwiseConv2D(3, padding="same", use_bias=False)(x)
    y = L.ReLU()(L.BatchNormalization(momentum=0.9)(y))  # statistics that follow a few hundred steps
    x = L.Flatten()(L.MaxPooling2D()(L.Add()([x, y])))
    return keras.Model(inputs, L.Dense(10)(x))


@pytest.mark.parametrize("which", ["tf_keras", "keras3"])
def test_the_documented_pipeline_leaves_the_model_that_ships(which, digits, tmp_path):
    """Trained at a 4-bit budget, frozen, fine-tuned and exported as docs/export.md says:
    the model in hand then computes what the file computes, under both Kerases (export_tflite
    aligns it; before, a share of decided inputs came out with another top-1)."""
    import keras as keras3

    K = {"tf_keras": keras, "keras3": keras3}[which]
    K.utils.set_random_seed(0)
    xtr, ytr, xte, _ = digits
    loss = K.losses.SparseCategoricalCrossentropy(from_logits=True)
    bp = tfbp.bitprune_model(_hard_swish_cnn(K), regularization=0.05, bits_lr_multiplier=20.0)
    bp.compile(K.optimizers.Adam(3e-3), loss)
    bp.fit(xtr, ytr, epochs=6, batch_size=64, verbose=0, callbacks=[tfbp.BitBudget(target_bits=4.0)])
    frozen = tfbp.freeze_bitlengths(bp, target_bits=4.0)
    assert tfbp.average_bits(frozen) <= 4.0 + 1e-6
    frozen.compile(K.optimizers.Adam(5e-4), loss, metrics=["accuracy"])
    frozen.fit(xtr, ytr, epochs=2, batch_size=64, verbose=0)
    path = tmp_path / "m.tflite"
    tfbp.export_tflite(frozen, path)
    got, ref = run_tflite(path, xte), frozen.predict(xte, verbose=0)
    step = output_step(path)
    assert float(ref.max() - ref.min()) > 10 * step, "constant logits: the comparison would say nothing"
    agreement = top1_agreement(got, ref, step)
    assert agreement.decided >= len(ref) // 2, agreement  # a trained network decides most inputs
    assert agreement.rate >= 0.99, agreement
    # Beyond top-1: Keras' and the file's logits are the same grid points, up to the rare value
    # within float error of a midpoint.
    assert agreement.off_grid_rate <= 0.01, agreement
    # Already aligned: aligning again moves nothing beyond float rounding.
    assert max(tfbp.align_to_tflite(frozen, path).values()) <= 0.01
