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
import numpy as np
import tf_keras
from tensorflow_model_optimization.quantization.keras import quantize_apply

from tf_bitpruning import _compat as _compat_tfmot
from tf_bitpruning import attention_layers, costs, op_lambdas
from tf_bitpruning.tfkeras_api import bitprune_annotate_layer, bitprune_scope
from tf_bitpruning.configs import BitPruneQuantizeConfig
from tf_bitpruning.keras3 import _compat
from tf_bitpruning.keras3.api import rerun
from tf_bitpruning.keras3.layers import BitPruneInputQuantizer, BitPruneWrapper
from tf_bitpruning.keras3.ops import KerasOpLambda
from tf_bitpruning.layer_kinds import KERAS3_KERNEL_ATTRS, integer_dtype
from tf_bitpruning.quantizers import ActivationBitQuantizer
from tf_bitpruning.registry import is_pass_through, is_quantizable
from tf_bitpruning.scheme import BitPruneQuantizeScheme

_BASE_KEYS = {"name", "trainable", "dtype"}
# Activations that tf_keras lacks or computes otherwise (hard_sigmoid: 0.2x + 0.5 there,
# x/6 + 1/2 in Keras 3): the twin calls Keras 3's function (TensorFlow ops under its backend).
_KERAS3_ACTIVATIONS = frozenset({"hard_sigmoid", "hard_silu", "hard_swish"})


def _dtype_name(dtype: Any) -> Any:
    if isinstance(dtype, dict):  # a Keras 3 DTypePolicy
        return dtype.get("config", {}).get("name", "float32")
    return dtype


def _tf_keras_layer(class_name: str, config: Dict[str, Any]):
    """The tf_keras layer of a Keras 3 layer config: the arguments tf_keras knows, with
    initializers, regularizers and constraints left out (the weights are copied)."""
    cls = getattr(tf_keras.layers, class_name, None) or attention_layers.CUSTOM_OBJECTS.get(class_name)
    if class_name == "RandomCrop":  # as Keras 3 computes it at inference
        cls, config = op_lambdas.RandomCrop, dict(config, identity_at_inference=True)
    if cls is None:
        raise ValueError(f"export: the Keras 3 layer '{config.get('name')}' ({class_name}) has no tf_keras "
                         f"counterpart to export it through.")
    accepted = set(inspect.signature(cls.__init__).parameters) | _BASE_KEYS
    kept = {k: v for k, v in config.items() if k in accepted
            and not k.endswith(("_initializer", "_regularizer", "_constraint"))}
    if class_name == "MultiHeadAttention":  # tf_keras' from_config reads these (None: built on call)
        kept.update(query_shape=None, key_shape=None, value_shape=None)
    if "dtype" in kept:
        kept["dtype"] = _dtype_name(kept["dtype"])
    if isinstance(kept.get("activation"), str) and kept["activation"] in _KERAS3_ACTIVATIONS:
        kept["activation"] = _keras3_activation(kept["activation"])
    return cls.from_config(kept)


def _keras3_activation(name: str):
    """Keras 3's activation ``name`` as a tf_keras-serializable function (tfmot clones
    layers through their configs), named as the registry knows it."""
    fn = keras.activations.get(name)
    registry_name = {"hard_silu": "hard_swish"}.get(fn.__name__, fn.__name__)
    key = f"tf_bitpruning_keras3>{registry_name}"
    registered = tf_keras.utils.get_custom_objects().get(key)
    if registered is not None:
        return registered

    def activation(x):
        return fn(x)

    activation.__name__ = activation.__qualname__ = registry_name
    return tf_keras.utils.register_keras_serializable("tf_bitpruning_keras3", registry_name)(activation)


def _op_lambda(layer: KerasOpLambda, config):
    """The ``TFOpLambda`` of a :class:`KerasOpLambda` (annotated with ``config`` unless None),
    called on the tensor with the op's constants as keywords, as tf_keras records it."""
    function, keywords = layer.tf_call()
    twin = op_lambdas.TFOpLambda.from_config({"name": layer.name, "function": function, "trainable": True,
                                              "dtype": "float32"})
    if config is not None:
        twin = op_lambdas.annotate(twin, config)
    return lambda x, **kwargs: twin(x, **keywords)


def _tf_keras_config(config: BitPruneQuantizeConfig, class_name: str) -> BitPruneQuantizeConfig:
    """The wrapper's config with Keras 3 kernel names mapped back to tf_keras's."""
    renames = {v: k for k, v in KERAS3_KERNEL_ATTRS.get(class_name, {}).items()}
    if not renames:
        return config
    quantizers = {renames.get(a, a): q for a, q in config.weight_quantizers.items()}
    return config.replace(weight_attrs=list(quantizers), weight_quantizer=quantizers)


def to_tf_keras(model: keras.Model) -> tf_keras.Model:
    """The tf_keras twin of a bit-pruned Keras 3 model (see module doc)."""
    graph = _compat.functional_graph(model)
    ops = _compat.graph_operations(graph)
    input_quantizers = [op for op in ops if isinstance(op, BitPruneInputQuantizer)]

    def twin_of(layer):
        if isinstance(layer, BitPruneInputQuantizer):
            return lambda x, **kwargs: x  # tfmot's layout adds the twin's input quantizers
        if isinstance(layer, BitPruneWrapper):
            config = _tf_keras_config(layer.quantize_config, type(layer.layer).__name__)
            if isinstance(layer.layer, KerasOpLambda):
                return _op_lambda(layer.layer, config)
            inner = _tf_keras_layer(type(layer.layer).__name__, layer.inner_config())
            return bitprune_annotate_layer(inner, config)
        if isinstance(layer, KerasOpLambda):
            return _op_lambda(layer, None)
        twin = _tf_keras_layer(type(layer).__name__, layer.get_config())
        # As bitprune_annotate_model does: a layer without quantizers (padding, pooling, reshape)
        # is annotated too, so tfmot quantizes the model input it reads (quantize_apply adds
        # input quantizers only before annotated layers). Skipped layers stay plain.
        plain = is_quantizable(layer) or is_pass_through(layer)  # as tfkeras_api leaves them
        return twin if plain else _compat_tfmot.QuantizeAnnotate(twin)

    with bitprune_scope():
        annotated, twins = rerun(graph, twin_of, make_input=tf_keras.Input, make_model=tf_keras.Model,
                                 name=model.name, drop_training=True)
    for layer in ops:
        twin = twins.get(layer.name)
        source = layer.layer if isinstance(layer, BitPruneWrapper) else layer
        if twin is not None and source.weights and not isinstance(layer, BitPruneInputQuantizer):
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
    # Inputs at the scales models take (normalized, and raw pixels before a Rescaling).
    rng = np.random.RandomState(0)
    probe = [_index_probe(model, x, rng) if integer_dtype(x.dtype) else
             np.concatenate([scale * rng.standard_normal((4,) + tuple(x.shape[1:])) for scale in (1, 16, 128)])
             .astype(x.dtype) for x in graph.inputs]
    check_twin(model, twin, probe if len(probe) > 1 else probe[0])
    return twin


def _index_probe(model, x, rng) -> np.ndarray:
    """Integer inputs (token ids) that every Embedding of ``model`` can look up."""
    inner = [getattr(layer, "layer", layer) for layer in model.layers]
    sizes = [layer.input_dim for layer in inner if isinstance(layer, keras.layers.Embedding)]
    return rng.randint(0, min(sizes, default=2), size=(12,) + tuple(x.shape[1:])).astype(x.dtype)


def _copy_quantizer_state(model, twin) -> None:
    """Bitlengths and ranges of every quantizer, layer by layer: wrappers by name
    (tfmot's ``quant_<layer>``, as ours), input quantizers in order."""
    ours = [layer for layer in model.layers if costs.is_input_quantizer(layer) or isinstance(layer, BitPruneWrapper)]
    theirs = {layer.name: layer for layer in twin.layers}
    inputs = [layer for layer in twin.layers if costs.is_input_quantizer(layer)]
    for layer in ours:
        other = inputs.pop(0) if costs.is_input_quantizer(layer) and inputs else theirs.get(layer.name)
        pairs = [] if other is None else (
            list(zip(costs.activation_tensors(layer), costs.activation_tensors(other)))
            + [((q, v), (q2, v2)) for (_, q, v, _), (_, q2, v2, _) in
               zip(costs.weight_tensors(layer), costs.weight_tensors(other))])
        counts = (len(costs.activation_tensors(layer)) + len(costs.weight_tensors(layer)),
                  len(costs.activation_tensors(other)) + len(costs.weight_tensors(other)) if other else 0)
        if other is None or counts[0] != counts[1]:
            raise RuntimeError(f"export: the tf_keras twin of '{model.name}' quantizes layer '{layer.name}' "
                               f"otherwise than the Keras 3 model ({counts[0]} vs {counts[1]} quantizers). "
                               f"Please report this as a bug.")
        for (_, source), (_, target) in pairs:
            for key, variable in target.items():
                variable.assign(keras.ops.convert_to_numpy(source[key]))


def check_twin(model, twin, inputs) -> None:
    """Refuses a twin whose outputs differ from the Keras 3 model's on ``inputs`` more than
    float rounding can explain: a layer the twin rebuilt with other semantics moves the
    outputs of most inputs. Rounding alone (the same value on a grid midpoint, rounded
    apart by the two Kerases' float ops, then amplified by a deep network: ResNet50V2 moved
    one input's outputs by 1.0 % of their range) moves a few: a quarter of the inputs with
    an output more than 1 % of the output range apart is refused."""
    ours = [np.asarray(o) for o in _as_list(model(inputs, training=False))]
    theirs = [np.asarray(o) for o in _as_list(twin(inputs, training=False))]
    for a, b in zip(ours, theirs):
        scale = float(np.ptp(a)) or 1.0
        per_input = np.abs(a - b).reshape(len(a), -1).max(axis=1) / scale
        if np.mean(per_input > 0.01) > 0.25:
            raise RuntimeError(
                f"export: the tf_keras twin of Keras 3 model '{model.name}' computes other outputs "
                f"({np.mean(per_input > 0.01):.0%} of the probe inputs more than 1 % of the output range "
                f"apart, up to {per_input.max():.1%}): some layer has other semantics in tf_keras. Please "
                f"report this with the model's layer list.")


def _as_list(x):
    return list(x) if isinstance(x, (list, tuple)) else [x]
