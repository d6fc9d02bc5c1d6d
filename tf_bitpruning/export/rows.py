"""Sequence layers as the integer ops TFLite runs (the export graph, :mod:`.graph`, calls them):
a Dense or an EinsumDense over the rows of a 3-D input as one FULLY_CONNECTED with its bias
and activation fused, and a LayerNormalization as MEAN, SQUARED_DIFFERENCE, RSQRT, MUL, ADD."""

from __future__ import annotations

from typing import Optional

import numpy as np
import tensorflow as tf
import tf_keras as keras

L = keras.layers


def dense_on_rows(inner: L.Dense, x: tf.Tensor) -> tf.Tensor:
    """Dense on a 3-D or wider input (a sequence) as one FULLY_CONNECTED over its rows,
    with the bias and activation fused into it, between reshapes: Keras' tensordot
    leaves the bias add outside the matmul, where it has no grid (it would run in float)."""
    n_in, n_out = int(x.shape[-1]), int(inner.kernel.shape[-1])
    y = tf.matmul(tf.reshape(x, [-1, n_in]), inner.kernel)
    if inner.use_bias:
        y = tf.nn.bias_add(y, inner.bias)
    inner_dims = x.shape[1:-1]
    if all(d is not None for d in inner_dims):  # a static shape: no shape ops in the file
        y = tf.reshape(y, [-1] + [int(d) for d in inner_dims] + [n_out])
    else:
        y = tf.reshape(y, tf.concat([tf.shape(x)[:-1], [n_out]], axis=0))
    return inner.activation(y) if inner.activation is not None else y


def einsum_contraction(equation: str) -> Optional[int]:
    """How many trailing input axes an EinsumDense equation contracts with the kernel's
    leading ones, its output being the other input axes then the other kernel axes (a
    Dense over rows: ``abc,cd->abd``, ``abc,cde->abde``, ``abcd,cde->abe``); else None."""
    try:
        operands, out = equation.replace(" ", "").split("->")
        x, kernel = operands.split(",")
    except ValueError:
        return None
    k = len([c for c in kernel if c in x and c not in out])
    if k == 0 or "." in equation or x[len(x) - k:] != kernel[:k] or out != x[:len(x) - k] + kernel[k:]:
        return None
    return k


def einsum_on_rows(inner: L.EinsumDense, x: tf.Tensor) -> tf.Tensor:
    """An EinsumDense that is a Dense over rows (:func:`einsum_contraction`) as one
    FULLY_CONNECTED with its bias and activation fused, between reshapes: Keras' einsum
    leaves the bias add of a multi-axis output outside the matmul (in float)."""
    k = einsum_contraction(inner.equation)
    kernel = inner.kernel
    n_in = int(np.prod(kernel.shape[:k]))
    out_dims = [int(d) for d in kernel.shape[k:]]
    y = tf.matmul(tf.reshape(x, [-1, n_in]), tf.reshape(kernel, [n_in, -1]))
    if inner.bias is not None:
        y = y + tf.reshape(tf.broadcast_to(tf.cast(inner.bias, tf.float32), out_dims), [-1])
    y = inner.activation(y) if inner.activation is not None else y
    lead = [int(d) for d in x.shape[1:x.shape.rank - k]]
    return tf.reshape(y, [-1] + lead + out_dims)


def layer_norm_ops(inner: L.LayerNormalization, x: tf.Tensor) -> tf.Tensor:
    """LayerNormalization as the integer ops TFLite has (MEAN, SQUARED_DIFFERENCE, RSQRT,
    MUL, ADD) rather than Keras' fused batch norm (transposes, FILLs): its statistics have
    no learned grid, the converter calibrates them (``representative_dataset``); the
    output is quantized onto its learned grid after."""
    axes = [a % x.shape.rank for a in (inner.axis if isinstance(inner.axis, (list, tuple)) else [inner.axis])]
    mean = tf.reduce_mean(x, axes, keepdims=True)
    variance = tf.reduce_mean(tf.math.squared_difference(x, mean), axes, keepdims=True)
    y = (x - mean) * tf.math.rsqrt(variance + inner.epsilon)
    shape = [x.shape[a] if a in axes else 1 for a in range(x.shape.rank)]
    if inner.scale:
        y = y * tf.reshape(tf.cast(inner.gamma, tf.float32), shape)
    if inner.center:
        y = y + tf.reshape(tf.cast(inner.beta, tf.float32), shape)
    return y
