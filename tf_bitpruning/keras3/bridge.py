"""A Keras 3 bit-pruned model as its tf_keras twin, for the one export pipeline.

The exporter (``tf_bitpruning/export``) re-runs a tfmot-wrapped tf_keras model op
by op. A Keras 3 model reaches it as a twin: the same layers rebuilt in tf_keras
from their configs, the same weights, each wrapped with the *same*
``BitPruneQuantizeConfig`` (so the same tensors are quantized), and the same
bitlengths and ranges. The twin computes what the Keras 3 model computes
(``tests/test_keras3.py`` checks it), so the file agrees with the Keras 3 model.
"""

from __future__ import annotations

import inspect
from typing import Any, Dict

import keras
import tf_keras

from tf_bitpruning import costs, scheme
from tf_bitpruning.configs import BitPruneQuantizeConfig
from tf_bitpruning.keras3 import _compat
from tf_bitpruning.keras3.layers import BitPruneInputQuantizer, BitPruneWrapper
from tf_bitpruning.quantizers import ActivationBitQuantizer
from tf_bitpruning.scheme import BitPruneQuantizeScheme

_BASE_KEYS = {"name", "trainable", "dtype"}


def _dtype_name(dtype: Any) -> Any:
    if isinstance(dtype, dict):  # a Keras 3 DTypePolicy
        return dtype.get("config", {}).get("name", "float32")
    return dtype


def _tf_keras_layer(class_name: str, config: Dict[str, Any]):
    """The tf_keras layer of a Keras 3 layer config: the arguments tf_keras knows, with
    initializers, regularizers and constraints left out (the weights are copied)."""
    cls = getattr(tf_keras.layers, class_name, None)
    if cls is None:
        raise ValueError(f"export: the Keras 3 layer '{config.get('name')}' ({class_name}) has no tf_keras "
                         f"counterpart to export it through.")
    accepted = set(inspect.signature(cls.__init__).parameters) | _BASE_KEYS
    kept = {k: v for k, v in config.items() if k in accepted
            and not k.endswith(("_initializer", "_regularizer", "_constraint"))}
    if "dtype" in kept:
        kept["dtype"] = _dtype_name(kept["dtype"])
    return cls.from_config(kept)


def _tf_keras_config(config: BitPruneQuantizeConfig, class_name: str) -> BitPruneQuantizeConfig:
    """The wrapper's config with Keras 3 kernel names mapped back to tf_keras's."""
    renames = {v: k for k, v in scheme._KERAS3_KERNEL_ATTRS.get(class_name, {}).items()}
    if not renames:
        return config
    quantizers = {renames.get(a, a): q for a, q in config.weight_quantizers.items()}
    return config.replace(weight_attrs=list(quantizers), weight_quantizer=quantizers)


def to_tf_keras(model: keras.Model) -> tf_keras.Model:
    """The tf_keras twin of a bit-pruned Keras 3 model (see module doc)."""
    from tensorflow_model_optimization.quantization.keras import quantize_apply

    from tf_bitpruning.api import bitprune_annotate_layer, bitprune_scope

    graph = _compat.functional_graph(model)
    ops = _compat.graph_operations(graph)
    input_quantizers = [op for op in ops if isinstance(op, BitPruneInputQuantizer)]
    twins: Dict[str, Any] = {}

    def operation_fn(layer):
        if isinstance(layer, BitPruneInputQuantizer):
            return lambda x, **kwargs: x  # tfmot's layout adds the twin's input quantizers
        if layer.name not in twins:
            if isinstance(layer, BitPruneWrapper):
                inner = _tf_keras_layer(type(layer.layer).__name__, layer.inner_config())
                twins[layer.name] = bitprune_annotate_layer(
                    inner, _tf_keras_config(layer.quantize_config, type(layer.layer).__name__))
            else:
                twins[layer.name] = _tf_keras_layer(type(layer).__name__, layer.get_config())
        return twins[layer.name]

    inputs = [tf_keras.Input(batch_shape=x.shape, dtype=x.dtype, name=x._keras_history.operation.name)
              for x in graph.inputs]
    with bitprune_scope():
        outputs = _compat.run_through_graph(graph, inputs, operation_fn)
        annotated = tf_keras.Model(inputs, outputs, name=model.name)
    for layer in ops:
        twin = twins.get(layer.name)
        if twin is not None:
            source = layer.layer if isinstance(layer, BitPruneWrapper) else layer
            (twin.layer if hasattr(twin, "layer") else twin).set_weights(source.get_weights())
    loss = costs.get_bit_loss(model)
    input_template = (ActivationBitQuantizer.from_config(input_quantizers[0].quantizer.get_config())
                      if input_quantizers else None)
    with bitprune_scope():
        twin = quantize_apply(annotated, BitPruneQuantizeScheme(None, input_template,
                                                                quantize_inputs=bool(input_quantizers)))
    if loss is not None:
        costs.attach_bit_loss(twin, float(loss.regularization.numpy()), loss.weighting).kind = loss.kind
    _copy_quantizer_state(model, twin)
    return twin


def _copy_quantizer_state(model, twin) -> None:
    """Bitlengths and ranges of every quantized tensor, in inventory order (the same
    configs give the same tensors; input quantizers may be named apart)."""
    source, target = costs.quantized_tensors(model), costs.quantized_tensors(twin)
    inputs = {layer.name for layer in list(model.layers) + list(twin.layers) if costs.is_input_quantizer(layer)}
    mismatch = [(s.name, t.name) for s, t in zip(source, target)
                if s.kind != t.kind or (s.name != t.name and not {s.layer, t.layer} <= inputs)]
    if len(source) != len(target) or mismatch:
        raise RuntimeError(f"export: the tf_keras twin of '{model.name}' quantizes other tensors than the Keras 3 "
                           f"model ({len(source)} vs {len(target)}; first differences {mismatch[:3]}). "
                           f"Please report this as a bug.")
    for s, t in zip(source, target):
        for key, variable in t.variables.items():
            variable.assign(keras.ops.convert_to_numpy(s.variables[key]))
