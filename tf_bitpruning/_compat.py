"""The private tf_keras graph access and tfmot internals that the package needs outside
the exporter, in one place (tf_keras, Keras 2, through tfmot). Keras 3's are in
``keras3/_compat.py``; the front ends (:mod:`tf_bitpruning.frontend`) choose between them.

When tf_keras or Keras 3 is upgraded, this module (with ``export/_compat.py`` and
``keras3/_compat.py``) is where to look.
"""

from __future__ import annotations

from typing import Any, Dict, List

# tfmot's internals (``tensorflow_model_optimization.python...``, not its public API): the
# classes our wrappers, registry and layout transform build on. Imported here only.
from tensorflow_model_optimization.python.core.quantization.keras import quantize_annotate as _annotate
from tensorflow_model_optimization.python.core.quantization.keras import quantize_aware_activation as _qaa
from tensorflow_model_optimization.python.core.quantization.keras import quantize_layer as _quantize_layer
from tensorflow_model_optimization.python.core.quantization.keras import quantize_layout_transform as _layout
from tensorflow_model_optimization.python.core.quantization.keras import quantize_registry as _registry
from tensorflow_model_optimization.python.core.quantization.keras import quantize_wrapper as _wrapper
from tensorflow_model_optimization.python.core.quantization.keras import utils as _utils
from tensorflow_model_optimization.python.core.quantization.keras.default_8bit import default_8bit_transforms as _d8
from tensorflow_model_optimization.python.core.quantization.keras.graph_transformations import (
    model_transformer as _model_transformer, transforms as _transforms)

QuantizeAnnotate = _annotate.QuantizeAnnotate
QuantizeAwareActivation = _qaa.QuantizeAwareActivation
QuantizeLayer = _quantize_layer.QuantizeLayer
QuantizeWrapper = _wrapper.QuantizeWrapper
QuantizeWrapperV2 = _wrapper.QuantizeWrapperV2
QuantizeRegistry = _registry.QuantizeRegistry
QuantizeLayoutTransform = _layout.QuantizeLayoutTransform
InputLayerQuantize = _d8.InputLayerQuantize
ModelTransformer = _model_transformer.ModelTransformer
Transform, LayerPattern, LayerNode = _transforms.Transform, _transforms.LayerPattern, _transforms.LayerNode
serialize_layer = _utils.serialize_layer

# The activations (by name) that tfmot's quantize-aware activation quantizes before (its
# input: softmax, sigmoid, ...), after (relu, linear, ...), and all that it knows.
TFMOT_PRE_QUANT_ACTIVATIONS = frozenset(QuantizeAwareActivation._PRE_QUANT_ACTIVATIONS)
TFMOT_POST_QUANT_ACTIVATIONS = frozenset(QuantizeAwareActivation._POST_QUANT_ACTIVATIONS)
TFMOT_ACTIVATIONS = (TFMOT_PRE_QUANT_ACTIVATIONS | TFMOT_POST_QUANT_ACTIVATIONS
                     | frozenset(QuantizeAwareActivation._NO_QUANTIZE_ACTIVATIONS))

# tf_keras' layers for TF functions called on Keras tensors (``x + 3``), not exported by tf_keras.
from tf_keras.src.layers.core import tf_op_layer as _tf_op_layer  # noqa: E402
# What a SavedModel load revives a traced function as (a callable loss that was traced, say).
from tensorflow.python.saved_model.function_deserialization import RestoredFunction  # noqa: E402

TFOpLambda, SlicingOpLambda = _tf_op_layer.TFOpLambda, _tf_op_layer.SlicingOpLambda


def is_graph_network(model) -> bool:
    """Whether a tf_keras ``model`` is functional (not subclassed)."""
    return bool(model._is_graph_network)


def consumers(layer) -> List[Any]:
    """The layers that take a tf_keras ``layer``'s output, one per call."""
    return [node.outbound_layer for node in layer._outbound_nodes]


def producers(layer, node_index: int = 0) -> List[Any]:
    """The layers feeding a tf_keras ``layer``'s call ``node_index`` (empty at a model input)."""
    nodes = layer._inbound_nodes
    if len(nodes) <= node_index:
        return []
    import tensorflow as tf
    return list(tf.nest.flatten(nodes[node_index].inbound_layers))


# -- tfmot's wrappers (the tf_keras path) ---------------------------------------------------------

def tfmot_weight_quantizers(wrapper) -> List[tuple]:
    """``(weight, quantizer, quantizer variables, attribute name)`` of a tfmot
    ``QuantizeWrapper``'s quantized kernels."""
    return [(w, q, v, wrapper._weight_name(w.name)) for w, q, v in wrapper._weight_vars]


def tfmot_activation_quantizers(wrapper) -> List[tuple]:
    """``(quantizer, variables)`` of a tfmot ``QuantizeWrapper``'s activation quantizers:
    each quantize-aware activation's pre/post ones where built, then the output one."""
    found = []
    for qa in wrapper._quantize_activations:
        for attr in ("_pre_activation_vars", "_post_activation_vars"):
            if hasattr(qa, attr):
                found.append((qa.quantizer, getattr(qa, attr)))
    if getattr(wrapper, "_output_quantizers", None):
        found.append((wrapper._output_quantizers[0], wrapper._output_quantizer_vars))
    return found


def track(model, obj, name: str) -> None:
    """Makes ``obj`` a checkpoint dependency of a tf_keras ``model`` under ``name``."""
    model._track_trackable(obj, name=name)


def untrack(model, name: str) -> None:
    """Forgets a tf_keras ``model``'s checkpoint dependency ``name`` (see :func:`track`)."""
    model._self_unconditional_checkpoint_dependencies[:] = [
        ref for ref in model._self_unconditional_checkpoint_dependencies if ref.name != name]
    model._self_unconditional_dependency_names.pop(name, None)


def drop_restored_losses(model) -> None:
    """Removes a loaded tf_keras ``model``'s callable losses that call a function revived
    from a SavedModel (a traced bit loss, which only that function computes)."""
    model._callable_losses[:] = [
        c for c in model._callable_losses
        if not any(isinstance(a, RestoredFunction) for a in getattr(c, "args", ()))]


def tfmot_pre_quantize_also(predicate) -> None:
    """Makes tfmot's quantize-aware activation quantize the input of activations for
    which ``predicate(activation)`` holds, as well as its own list (sigmoid, softmax,
    tanh); tfmot's decision for any other activation is unchanged. Idempotent."""
    qaa = QuantizeAwareActivation
    original = qaa._should_pre_quantize
    if getattr(original, "_tf_bitpruning", False):
        return

    def _should_pre_quantize(self):
        return original(self) or predicate(self.activation)

    _should_pre_quantize._tf_bitpruning = True
    qaa._should_pre_quantize = _should_pre_quantize


# -- re-running a functional graph (the nested-model flattening, flatten.py) ------------------------

def run_nodes(model, inputs: List[Any], call) -> List[Any]:
    """Re-runs the graph of a functional or Sequential tf_keras ``model`` on ``inputs`` (one
    tensor per model input), with ``call(layer, args, kwargs)`` in place of every layer call
    (``kwargs`` as the call was recorded: tf_keras keeps ``training=False``). Returns the new
    outputs, one per model output."""
    import tensorflow as tf
    values = {id(x): y for x, y in zip(model.inputs, inputs)}

    def new(t):
        return values.get(id(t), t) if hasattr(t, "_keras_history") else t

    for depth in sorted(model._nodes_by_depth, reverse=True):
        for node in model._nodes_by_depth[depth]:
            if node.is_input:
                continue
            args, kwargs = tf.nest.map_structure(new, (tuple(node.call_args), dict(node.call_kwargs)))
            out = call(node.layer, args, kwargs)
            for x, y in zip(tf.nest.flatten(node.outputs), tf.nest.flatten(out)):
                values[id(x)] = y
    return [values[id(x)] for x in model.outputs]


def attention_parts(layer) -> Dict[str, Any]:
    """A built ``MultiHeadAttention``'s (tf_keras or Keras 3) query/key/value/output
    ``EinsumDense`` sublayers and its score and combine equations."""
    return {"query": layer._query_dense, "key": layer._key_dense, "value": layer._value_dense,
            "output": layer._output_dense, "scores": layer._dot_product_equation,
            "combine": layer._combine_equation}


def keras_mask(x) -> Any:
    """The mask a symbolic tensor carries (after ``Embedding(mask_zero=True)``, ``Masking``), or None."""
    return getattr(x, "_keras_mask", None)


def tensor_layer(x) -> Any:
    """The layer that computed a tf_keras model tensor ``x`` (a model input's input layer)."""
    return x._keras_history[0]


def keep_frozen(model) -> None:
    """tfmot's wrapper adds the wrapped layer's quantized weights to its own trainable
    weights, whether the wrapped layer is trainable or not: for every wrapper of ``model``
    (or ``model`` itself, a wrapper) around a non-trainable layer, they are taken out again
    and listed as non-trainable, so ``layer.trainable = False`` (a frozen backbone) keeps its
    kernels; the wrapper's own bitlengths stay trainable. (Also on a loaded or frozen copy,
    so that saved weights keep their order.)"""
    for wrapper in ([model] if isinstance(model, QuantizeWrapper) else getattr(model, "layers", [])):
        if isinstance(wrapper, QuantizeWrapper) and not wrapper.layer.trainable:
            quantized = {id(weight) for weight, _, _ in wrapper._weight_vars}
            listed = wrapper._trainable_weights  # edited in place (setattr would track them again)
            for i in reversed([i for i, w in enumerate(listed) if id(w) in quantized]):
                wrapper._non_trainable_weights.append(listed[i])
                del listed[i]
