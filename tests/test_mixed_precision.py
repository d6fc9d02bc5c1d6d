"""Mixed precision: a bit-pruned model trains under ``mixed_float16``.

The layers compute in float16; the bitlength and activation-range variables
stay float32 (not autocast, like BatchNormalization's statistics), and the
quantizers compute in float32 inside. tfmot's QuantizeWrapper takes the global
policy, not the wrapped layer's, so a float32 output layer has to be left
unwrapped with ``skip_layers`` to keep a float32 softmax.
"""

import contextlib

import numpy as np
import pytest
import tensorflow as tf
import tf_keras as keras

import tf_bitpruning as tfbp


@contextlib.contextmanager
def global_policy(name: str):
    """Sets Keras' global dtype policy inside the block, restores the previous one after
    (also when the block raises)."""
    previous = keras.mixed_precision.global_policy()
    keras.mixed_precision.set_global_policy(name)
    try:
        yield
    finally:
        keras.mixed_precision.set_global_policy(previous)


@pytest.fixture
def mixed_float16():
    with global_policy("mixed_float16"):
        yield


def _model():
    return keras.Sequential([
        keras.Input((8, 8, 1)),
        keras.layers.Conv2D(8, 3, padding="same", use_bias=False),
        keras.layers.BatchNormalization(),
        keras.layers.ReLU(),
        keras.layers.MaxPooling2D(),
        keras.layers.Flatten(),
        keras.layers.Dense(10),
        keras.layers.Activation("softmax", dtype="float32", name="out"),
    ])


@pytest.mark.slow
def test_bitprune_trains_under_mixed_float16(mixed_float16, digits):
    x, y = digits[0][:128], digits[1][:128]
    bp = tfbp.bitprune_model(_model(), regularization=0.5, skip_layers=["out"])
    assert bp.get_layer("quant_conv2d").compute_dtype == "float16"
    bitprune_vars = [v for v in bp.variables if v.name.endswith(("_bits:0", "_min:0", "_max:0"))]
    assert len(bitprune_vars) == 11  # input, ReLU and Dense output: bits+min+max; 2 kernels: bits
    for v in bitprune_vars:
        # A plain float32 variable, not a float16-reading AutoCastVariable.
        assert isinstance(v, tf.Variable) and v.dtype == tf.float32, v.name
        assert "AutoCast" not in type(v).__name__, v.name

    bp.compile(keras.optimizers.Adam(0.02), "sparse_categorical_crossentropy")
    assert isinstance(bp.optimizer, keras.mixed_precision.LossScaleOptimizer)
    losses = bp.fit(x, y, batch_size=32, epochs=2, shuffle=False, verbose=0).history["loss"]

    assert np.all(np.isfinite(losses))
    assert losses[-1] < losses[0]
    bits = tfbp.bitlengths(bp)
    assert max(bits.values()) < 7.0, bits  # 8 -> about 5.1 in 8 steps
    out = bp.predict(x[:8], verbose=0)
    assert out.dtype == np.float32
    np.testing.assert_allclose(out.sum(axis=1), 1.0, atol=1e-3)


def test_policy_is_restored_even_when_the_test_fails():
    """The fixture's policy does not leak into later tests, whatever the order
    (conftest also fails any test that leaves a policy other than float32 behind)."""
    assert keras.mixed_precision.global_policy().name == "float32"
    with pytest.raises(RuntimeError, match="inside"):
        with global_policy("mixed_float16"):
            assert keras.mixed_precision.global_policy().name == "mixed_float16"
            assert keras.layers.Dense(2).compute_dtype == "float16"
            raise RuntimeError("a failure inside the block")
    assert keras.mixed_precision.global_policy().name == "float32"
    assert keras.layers.Dense(2).compute_dtype == "float32"
