"""The pieces of an expanded ``MultiHeadAttention`` (:mod:`tf_bitpruning.attention`) that
Keras has no layer for, as tf_keras layers; :mod:`tf_bitpruning.keras3.attention_layers`
has their Keras 3 twins (same names, configs and math).

- :class:`AttentionEinsum`: an einsum of two activations (the attention scores
  ``key·query``, the context ``probabilities·value``). The registry quantizes its output on
  a learned grid (``layer_kinds.ACTIVATION_PRODUCTS``); both inputs already are on learned
  grids, so the converter writes it as one int8 ``BATCH_MATMUL`` (with transposes).
- :class:`AttentionSoftmax`: a softmax whose output lies on TFLite's int8 softmax grid (step
  1/256, 0 at code -128), as a ``fake_quant`` op: the converter keeps that grid and the file's
  ``SOFTMAX`` reproduces it (``layer_kinds.FIXED_GRID_LAYERS``).
"""

from __future__ import annotations

from typing import Dict, List

import tensorflow as tf
import tf_keras

_PACKAGE = "tf_bitpruning"
# TFLite's int8 softmax output grid: step 1/256, codes 0..255 (zero point -128 in int8).
SOFTMAX_STEP = 1.0 / 256.0
SOFTMAX_TOP = 255.0 / 256.0


def einsum_output_shape(equation: str, shapes: List[tuple]) -> tuple:
    """The output shape of ``equation`` on operands of ``shapes`` (None where unknown)."""
    inputs, output = equation.split("->")
    sizes: Dict[str, object] = {}
    for letters, shape in zip(inputs.split(","), shapes):
        for letter, size in zip(letters, tuple(shape)):
            if sizes.get(letter) is None:
                sizes[letter] = size
    return tuple(sizes.get(letter) for letter in output)


def check_equation(equation: str, name: str) -> None:
    """Refuses an equation that is not two plain operands (no ellipsis, no broadcasting)."""
    parts = equation.replace(" ", "").split("->")
    if len(parts) != 2 or len(parts[0].split(",")) != 2 or "." in equation:
        raise ValueError(f"AttentionEinsum '{name}': equation {equation!r} must read two operands "
                         f"with one letter per axis, e.g. 'aecd,abcd->acbe'.")


class EinsumOfTwo:
    """What both Kerases' ``AttentionEinsum`` share: the equation, its config and output shape
    (a mixin before the Keras ``Layer``; ``shape_type`` makes the Keras's shape)."""

    shape_type: type = tuple

    def __init__(self, equation: str, **kwargs):
        super().__init__(**kwargs)
        check_equation(equation, self.name)
        self.equation = equation

    def compute_output_shape(self, input_shape):
        return self.shape_type(einsum_output_shape(self.equation, [tuple(s) for s in input_shape]))

    def get_config(self):
        return dict(super().get_config(), equation=self.equation)


@tf_keras.utils.register_keras_serializable(package=_PACKAGE)
class AttentionEinsum(EinsumOfTwo, tf_keras.layers.Layer):
    """``tf.einsum(equation, a, b)`` of two activations ``[a, b]``.

    >>> scores = AttentionEinsum("aecd,abcd->acbe")([key, query])
    """

    shape_type = tf.TensorShape

    def call(self, inputs):
        a, b = inputs
        return tf.einsum(self.equation, a, b)


@tf_keras.utils.register_keras_serializable(package=_PACKAGE)
class AttentionSoftmax(tf_keras.layers.Layer):
    """A softmax over the last axis, its output on TFLite's int8 softmax grid (see module doc).

    >>> probabilities = AttentionSoftmax()(scores)
    """

    def call(self, inputs):
        probabilities = tf.nn.softmax(inputs, axis=-1)
        return tf.quantization.fake_quant_with_min_max_args(probabilities, 0.0, SOFTMAX_TOP, num_bits=8)

    def compute_output_shape(self, input_shape):
        return input_shape


CUSTOM_OBJECTS = {"AttentionEinsum": AttentionEinsum, "AttentionSoftmax": AttentionSoftmax}
