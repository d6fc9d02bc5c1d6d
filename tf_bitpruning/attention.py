"""``MultiHeadAttention`` expanded into layers whose tensors bit pruning learns, for tf_keras
and Keras 3 alike (:func:`tf_bitpruning.flatten.flatten` calls :func:`expand` for each).

An attention layer's kernels are sublayers, which no wrapper can quantize; so each call
``mha(query, value[, key])`` becomes the same computation in primitive layers, named after
the attention layer (``"<name>.query"``):

1. ``<name>.query``, ``.key``, ``.value``: its ``EinsumDense`` projections (kernels and
   outputs on learned grids), the query's kernel and bias scaled by ``1/sqrt(key_dim)``
   (Keras scales the projected query: the same product);
2. ``<name>.scores``: an :class:`~tf_bitpruning.attention_layers.AttentionEinsum` of key and
   query (output on a learned grid; an int8 ``BATCH_MATMUL`` in the ``.tflite``);
3. ``<name>.softmax``: an :class:`~tf_bitpruning.attention_layers.AttentionSoftmax`, its
   output on TFLite's fixed int8 softmax grid (step 1/256), then ``<name>.dropout`` when the
   layer has dropout (training only);
4. ``<name>.context``: an ``AttentionEinsum`` of the probabilities and the value;
5. ``<name>.output``: its output ``EinsumDense``.

The weights are copied, so the float model computes what the attention computed. Refused,
naming the layer: attention masks (``attention_mask=``, ``use_causal_mask=True``, masked inputs, query/value/
key masks), ``return_attention_scores=True``, ``attention_axes``, ``use_gate``,
``sliding_window``, inputs other than ``(batch, steps, features)``.
"""

from __future__ import annotations

import inspect
import math
from typing import Any, Callable, Dict, Optional

from tf_bitpruning import _compat
from tf_bitpruning.attention_layers import einsum_output_shape

# MultiHeadAttention options the expansion reproduces only at these values.
# (attention_axes: (1,) is the default on (batch, steps, features), as a built layer records it.)
_DEFAULT_OPTIONS = {"attention_axes": (None, (1,), (-2,)), "use_gate": (False,), "sliding_window": (None,)}
_UNSUPPORTED_CALL = ("attention_mask", "query_mask", "value_mask", "key_mask", "return_attention_scores",
                     "use_causal_mask")
_WHAT_TO_DO = ("Leave it in float (skip_layers=[its name]) and export with representative_dataset=..., "
               "or build the attention from EinsumDense layers.")


# The roles of the layers an expansion makes, named "<attention's name>.<role>".
ROLES = ("query", "key", "value", "scores", "softmax", "dropout", "context", "output")


def expanded_from(name: str) -> Optional[str]:
    """The name of the ``MultiHeadAttention`` whose expansion made the layer ``name``, or None."""
    base, _, role = name.rpartition(".")
    return base if base and role in ROLES else None


def _refuse(layer, what: str) -> None:
    raise ValueError(f"bitprune_model: '{layer.name}' (MultiHeadAttention) {what}: its expansion into "
                     f"bit-pruned layers does not support that. {_WHAT_TO_DO}")


def _call_arguments(layer, args, kwargs) -> Dict[str, Any]:
    bound = inspect.signature(layer.call).bind(*args, **kwargs)
    called = dict(bound.arguments)
    for name in _UNSUPPORTED_CALL:
        value = called.get(name)
        if value is not None and value is not False:
            _refuse(layer, f"is called with {name}={value if isinstance(value, bool) else '<a tensor>'}")
    config = layer.get_config()
    for name, defaults in _DEFAULT_OPTIONS.items():
        value = config.get(name, defaults[0])
        if (tuple(value) if isinstance(value, (list, tuple)) else value) not in defaults:
            _refuse(layer, f"has {name}={value!r}")
    for role in ("query", "value", "key"):
        x = called.get(role)
        if x is not None and len(x.shape) != 3:
            _refuse(layer, f"reads a {role} of shape {tuple(x.shape)}, not (batch, steps, features)")
        if x is not None and _compat.keras_mask(x) is not None:
            _refuse(layer, f"reads a masked {role} (after Embedding(mask_zero=True) or Masking)")
    return called


def expand(layer, args, kwargs, name_of: Callable[[str], str], classes) -> Any:
    """The output of ``layer(*args, **kwargs)`` (a built ``MultiHeadAttention`` called on
    symbolic tensors) computed by new primitive layers (see module doc). ``name_of(base)``
    gives each new layer a free name; ``classes`` holds the front end's ``AttentionEinsum``,
    ``AttentionSoftmax`` and ``Dropout`` (``FrontEnd.attention_pieces``)."""
    called = _call_arguments(layer, args, kwargs)
    query, value = called["query"], called["value"]
    key = called.get("key")
    key = value if key is None else key
    parts = _compat.attention_parts(layer)
    config = layer.get_config()

    def piece(role):  # the name of the expansion's layer in ``role`` (what expanded_from reads back)
        assert role in ROLES, role
        return name_of(f"{layer.name}.{role}")

    def projection(role, x, scale=1.0):
        source = parts[role]
        config = source.get_config()
        # Its output shape with the steps axis known (the layer's own says None: any length).
        shape = einsum_output_shape(config["equation"], [tuple(x.shape), tuple(source.get_weights()[0].shape)])
        dense = type(source).from_config(dict(config, output_shape=list(shape[1:]),
                                              name=piece(role)))
        y = dense(x)
        weights = source.get_weights()
        dense.set_weights([weights[0] * scale] + [b * scale for b in weights[1:]])
        return y

    q = projection("query", query, 1.0 / math.sqrt(float(config["key_dim"])))
    k = projection("key", key)
    v = projection("value", value)
    scores = classes.AttentionEinsum(parts["scores"], name=piece("scores"))([k, q])
    probabilities = classes.AttentionSoftmax(name=piece("softmax"))(scores)
    if config.get("dropout"):
        probabilities = classes.Dropout(config["dropout"], name=piece("dropout"))(probabilities)
    context = classes.AttentionEinsum(parts["combine"], name=piece("context"))([probabilities, v])
    return projection("output", context)

