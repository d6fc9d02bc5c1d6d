"""Sigmoid and swish as TFLite's int8 kernels compute them, for the Keras forward pass.

TFLite has no swish op: the converter writes ``x * sigmoid(x)`` as LOGISTIC and MUL,
and an int8 LOGISTIC writes its output on the fixed grid ``k/256`` (``k = 0 .. 255``).
A float sigmoid in Keras therefore differs from the file wherever rounding the gate
to 1/256 moves the product across a grid midpoint (0.02-0.4 % of a swish layer's
outputs a step off; up to 6 % of an EfficientNet squeeze-excite's), and those steps
grow through the network. Here the gate is rounded the same way in Keras (the
gradient passes straight through), so the file computes what the model computes.

The pre-activation of a swish or gelu inside a kernel layer (``Conv2D(activation="swish")``,
``Dense(activation="gelu")``) is a tensor of the file too (TFLite fuses neither into the
kernel's op), but tfmot's quantize-aware activation quantizes only after them;
:func:`quantize_aware` marks such activations to be quantized before as
well (a learned grid, like a sigmoid's input), so that no tensor is left for the
converter to calibrate (which re-quantized the layer's kernel and bias on grids of its
own, and rounded float inputs before their preprocessing).
"""

from __future__ import annotations

import tensorflow as tf

from tf_bitpruning import _compat
from tf_bitpruning.layer_kinds import activation_name

# TFLite's int8 LOGISTIC output: scale 1/256, zero point -128.
SIGMOID_STEP = 1.0 / 256.0


def _on_sigmoid_grid(s: tf.Tensor) -> tf.Tensor:
    """``s`` in [0, 1] rounded onto TFLite's LOGISTIC grid ``k/256`` (``k <= 255``). The
    gradient passes straight through below 255/256 (a sigmoid's own gradient above is
    < 0.004); one fake-quant op, which the converter folds into LOGISTIC's output."""
    return tf.quantization.fake_quant_with_min_max_vars(s, 0.0, 255.0 * SIGMOID_STEP, num_bits=8)


def tflite_sigmoid(x):
    """``sigmoid(x)`` rounded onto TFLite's int8 LOGISTIC output grid."""
    x32 = tf.cast(x, tf.float32)
    return tf.cast(_on_sigmoid_grid(tf.sigmoid(x32)), x.dtype)


def tflite_swish(x):
    """``x · sigmoid(x)`` with the sigmoid on TFLite's LOGISTIC grid (LOGISTIC, then MUL)."""
    x32 = tf.cast(x, tf.float32)
    return tf.cast(x32 * _on_sigmoid_grid(tf.sigmoid(x32)), x.dtype)


tflite_sigmoid.__name__ = "sigmoid"
tflite_swish.__name__ = "swish"


def _pre_quantized_swish(x):
    return tflite_swish(x)


_pre_quantized_swish.__name__ = "swish"
# Read by tfmot's quantize-aware activation (the hook at the end) and the Keras 3 wrapper.
_pre_quantized_swish.pre_quantize = True


def _pre_quantized_gelu(x):
    return tf.nn.gelu(x, approximate=False)  # both Kerases' "gelu"


_pre_quantized_gelu.__name__ = "gelu"
_pre_quantized_gelu.pre_quantize = True


def quantize_aware(activation, inside_layer: bool):
    """The function a bit-pruned layer runs for ``activation``: sigmoid and swish as
    TFLite computes them (see the module doc), a swish or gelu inside a layer (not an
    ``Activation`` layer, whose input its producer quantizes) also quantized before;
    any other activation as it is."""
    name = activation_name(activation)
    if name == "sigmoid":
        return tflite_sigmoid
    if name == "swish":
        return _pre_quantized_swish if inside_layer else tflite_swish
    if name == "gelu" and inside_layer:
        return _pre_quantized_gelu
    return activation


def pre_quantized(activation) -> bool:
    """Whether ``activation`` (from :func:`quantize_aware`) is quantized before, too."""
    return bool(getattr(activation, "pre_quantize", False))


_compat.tfmot_pre_quantize_also(pre_quantized)
