"""The Keras 3 twins of :mod:`tf_bitpruning.attention_layers` (same names, configs and math):
the pieces of an expanded ``MultiHeadAttention`` that Keras has no layer for."""

from __future__ import annotations

import keras

from tf_bitpruning.attention_layers import SOFTMAX_STEP, SOFTMAX_TOP, EinsumOfTwo

_PACKAGE = "tf_bitpruning"


@keras.saving.register_keras_serializable(package=_PACKAGE)
class AttentionEinsum(EinsumOfTwo, keras.layers.Layer):
    """``keras.ops.einsum(equation, a, b)`` of two activations ``[a, b]``.

    >>> scores = AttentionEinsum("aecd,abcd->acbe")([key, query])
    """

    def call(self, inputs):
        a, b = inputs
        return keras.ops.einsum(self.equation, a, b)


@keras.saving.register_keras_serializable(package=_PACKAGE)
class AttentionSoftmax(keras.layers.Layer):
    """A softmax over the last axis, its output on TFLite's int8 softmax grid (step 1/256):
    rounded half up and with the gradient of TensorFlow's ``fake_quant`` (the tf_keras twin's
    op): straight through on the grid's span ``[0, 255/256]``, zero above it.

    >>> probabilities = AttentionSoftmax()(scores)
    """

    def call(self, inputs):
        ops = keras.ops
        probabilities = ops.softmax(inputs, axis=-1)
        on_grid = ops.minimum(ops.floor(probabilities / SOFTMAX_STEP + 0.5) * SOFTMAX_STEP, SOFTMAX_TOP)
        inside = probabilities * ops.cast(probabilities <= SOFTMAX_TOP, probabilities.dtype)
        return inside + ops.stop_gradient(on_grid - inside)

    def compute_output_shape(self, input_shape):
        return input_shape
