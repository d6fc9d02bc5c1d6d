"""Every private tfmot, Keras and TFLite API the exporter uses, in one place.

The exporter re-runs a tfmot-wrapped functional model op by op (see
:mod:`.graph`) and edits the converted flatbuffer (see :mod:`.flatbuffer`);
both need internals that no public API offers. When tfmot, tf_keras or
TensorFlow is upgraded, this is the module to check: nothing else under
``tf_bitpruning/export`` touches a private attribute of theirs.
"""

from __future__ import annotations

import inspect
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

import tensorflow as tf
import tf_keras as keras
# TFLite's flatbuffer object API (not exported under tf.lite).
from tensorflow.lite.python import schema_py_generated as schema  # noqa: F401  (re-exported)
from tensorflow.lite.tools import flatbuffer_utils  # noqa: F401  (re-exported)
from tensorflow_model_optimization.python.core.quantization.keras import quantize_aware_activation as _qaa
from tensorflow_model_optimization.python.core.quantization.keras import quantize_layer as _quantize_layer
from tensorflow_model_optimization.python.core.quantization.keras import quantize_wrapper as _quantize_wrapper

from tf_bitpruning._compat import tfmot_weight_quantizers

QuantizeWrapper = _quantize_wrapper.QuantizeWrapper      # and QuantizeWrapperV2, its subclass
QuantizeLayer = _quantize_layer.QuantizeLayer            # the model-input quantizer
QuantizeAwareActivation = _qaa.QuantizeAwareActivation


# -- tfmot's QuantizeWrapper ---------------------------------------------------------------------

def inner(layer):
    """The user's layer inside a tfmot wrapper (the layer itself otherwise)."""
    return layer.layer if isinstance(layer, QuantizeWrapper) else layer


# ``(weight, quantizer, quantizer variables, attribute name)`` of a wrapper's quantized weights.
weight_quantizers = tfmot_weight_quantizers


def output_quantizer(wrapper) -> Tuple[Optional[Any], Optional[Dict[str, Any]]]:
    """``(quantizer, variables)`` of a wrapper's output quantizer, or ``(None, None)``."""
    quantizers = getattr(wrapper, "_output_quantizers", None)
    if not quantizers:
        return None, None
    return quantizers[0], wrapper._output_quantizer_vars


def quantize_activations(wrapper) -> List[Any]:
    """The wrapper's ``QuantizeAwareActivation`` objects, in ``activation_attrs`` order."""
    return list(wrapper._quantize_activations)


def activation_vars(qaa) -> Tuple[Optional[Dict[str, Any]], Optional[Dict[str, Any]]]:
    """``(pre, post)`` quantizer variables of a ``QuantizeAwareActivation``: each is
    None where tfmot does not quantize on that side."""
    pre = qaa._pre_activation_vars if qaa._should_pre_quantize() else None
    post = qaa._post_activation_vars if qaa._should_post_quantize() else None
    return pre, post


def plain_activation(activation):
    """The activation function under a ``QuantizeAwareActivation`` (or itself)."""
    return activation.activation if isinstance(activation, QuantizeAwareActivation) else activation


def set_attribute(obj, attr: str, value) -> Any:
    """Sets ``obj.attr`` past Keras' attribute tracking; returns the previous value."""
    old = obj.__dict__.get(attr, getattr(obj, attr, None))
    object.__setattr__(obj, attr, value)
    return old


# -- Keras' functional graph ---------------------------------------------------------------------

def consumers(model: keras.Model) -> Dict[int, List[Any]]:
    """``id(layer)`` -> the layers that read its output."""
    found: Dict[int, List[Any]] = {}
    for nodes in model._nodes_by_depth.values():
        for node in nodes:
            if node.is_input:
                continue
            for producer in tf.nest.flatten(node.inbound_layers):
                found.setdefault(id(producer), []).append(node.layer)
    return found


def calls(layer) -> int:
    """How many times ``layer`` is called in the model graph."""
    return len(layer._inbound_nodes)


def producers(layer) -> List[Any]:
    """The layers feeding ``layer`` (empty when it is called more than once or is an input)."""
    return list(tf.nest.flatten(layer._inbound_nodes[0].inbound_layers)) if calls(layer) == 1 else []


def output_layers(model: keras.Model) -> List[Any]:
    """The layers that produce the model's outputs."""
    return [x._keras_history.layer for x in model.outputs]


def input_layers(model: keras.Model) -> List[Any]:
    """The ``InputLayer`` of each model input, in ``model.inputs`` order."""
    return [x._keras_history.layer for x in model.inputs]


def run_functional(model: keras.Model, inputs: Sequence[tf.Tensor],
                   call: Callable[[Any, tuple, dict], Any]) -> List[tf.Tensor]:
    """Keras' ``Functional._run_internal_graph`` with ``call(layer, args, kwargs)``
    in place of ``layer(*args, **kwargs)``; returns the model's outputs."""
    tensor_dict: Dict[str, List[tf.Tensor]] = {}
    usage = model._tensor_usage_count
    for x, y in zip(model.inputs, inputs):
        tensor_dict[str(id(x))] = [y] * usage[str(id(x))]
    for depth in sorted(model._nodes_by_depth, reverse=True):
        for node in model._nodes_by_depth[depth]:
            if node.is_input or any(t not in tensor_dict for t in node.flat_input_ids):
                continue
            args, kwargs = node.map_arguments(tensor_dict)
            with tf.name_scope(node.layer.name):
                outputs = call(node.layer, args, kwargs)
            for x_id, y in zip(node.flat_output_ids, tf.nest.flatten(outputs)):
                tensor_dict[x_id] = [y] * usage[x_id]
    return [tensor_dict[str(id(x))].pop() for x in model.outputs]


def accepts_training(layer) -> bool:
    """Whether ``layer.call`` takes a ``training`` argument."""
    try:
        return "training" in inspect.signature(layer.call).parameters
    except (TypeError, ValueError):
        return False


def causal_padding(conv1d, x: tf.Tensor):
    """The paddings a causal ``Conv1D`` applies to ``x``."""
    return conv1d._compute_causal_padding(x)
