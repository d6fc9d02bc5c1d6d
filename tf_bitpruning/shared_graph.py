"""Graph-building economies shared by every quantizer of a traced step.

Tracing a train step spends its time creating graph ops, Python's part of it per op,
and the quantizers sit on every tensor of the step. Two economies, neither of which
changes what the step computes:

- :func:`const`: one Const op per Python scalar per graph, shared by every use;
- :func:`call_math`: a quantizer's pure math traced once per configuration and rank
  into a tf.function that every call of the step then calls (one call op instead of
  tens). The runtime inlines the calls before optimizing the step graph, so the step
  runs the same ops: same results, same speed.
"""

from __future__ import annotations

from typing import Any, Dict

import weakref

import tensorflow as tf

# Python scalars a quantizer combines with tensors, as one Const op per graph: every
# quantizer of a train step uses the same few (0, 1, 2, 1e-12, ...), and a Python
# float converted at each use is a Const op each time (a third of the quantizer ops
# of a traced train step). Same float32 values, so the same results; eager: the scalar.
_CONSTANTS: "weakref.WeakKeyDictionary" = weakref.WeakKeyDictionary()


def const(value: float):
    """``value`` as a float32 constant shared by every use in the graph being built
    (outside control dependencies, so sharing it adds no ordering); eager: ``value``."""
    if tf.executing_eagerly():
        return value
    graph = tf.compat.v1.get_default_graph()
    table = _CONSTANTS.setdefault(graph, {})
    key = float(value)
    tensor = table.get(key)
    if tensor is None:
        with tf.control_dependencies(None), tf.name_scope("bitprune_const/"):
            tensor = table[key] = tf.constant(key, tf.float32)
    return tensor


# Key -> the shared tf.function (see call_math).
MATH_FUNCTIONS: Dict[Any, Any] = {}


def relaxed_spec(shape) -> tf.TensorSpec:
    """A float32 spec of ``shape``'s rank: dims of 1 kept (bitlengths broadcast along them), others free."""
    return tf.TensorSpec([1 if d == 1 else None for d in shape], tf.float32)


def call_math(key, math, *tensors):
    """``math(*tensors)`` through the shared tf.function of ``key`` (built at first use).
    One output gets the static shape of ``tensors[0]``; a tuple of outputs is returned
    as the function gives it. Eager: ``math`` directly."""
    if tf.executing_eagerly():
        return math(*tensors)
    specs = tuple(relaxed_spec(t.shape) for t in tensors)
    full_key = (key, specs)
    function = MATH_FUNCTIONS.get(full_key)
    if function is None:
        function = MATH_FUNCTIONS[full_key] = tf.function(math, input_signature=specs, autograph=False)
    out = function(*tensors)
    if not isinstance(out, (tuple, list)):
        out.set_shape(tensors[0].shape)
    return out
