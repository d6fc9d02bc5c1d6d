"""The layout pass of the scheme: what tfmot's layout transform changes before the
registry configures each layer, and the rules it shares with the Keras 3 graph
rebuild (:mod:`tf_bitpruning.keras3.api`).

- a SeparableConv2D is split into ``<name>_depthwise -> <name>_pointwise``
  (:func:`separable_split`), so the tensor between its kernels gets a learned grid;
- each model input gets an input quantizer, after its preprocessing chain
  (``Rescaling``, ``Normalization`` and the training-only layers such as
  ``RandomFlip``: :func:`preprocessing_chain`);
- an output quantizer is dropped where the only consumer re-quantizes the same
  values right away (:func:`output_requantized`; see :mod:`tf_bitpruning.scheme`);
- with ``quantize_outputs=False``, the model's outputs get none (:func:`float_output_layers`).

Which layers each rule applies to is in :mod:`tf_bitpruning.layer_kinds`.
"""

from __future__ import annotations

import collections
from typing import Dict, List, Tuple

import tf_keras as keras

from tf_bitpruning import _compat, frontend
from tf_bitpruning.layer_kinds import (FOLDABLE_PRODUCERS, FUSED_ACTIVATIONS, INPUT_CHAIN_LAYERS, OUTPUT_TAILS,
                                       TRAINING_ONLY, REQUANTIZING_CONSUMERS, SPLIT_LAYERS, UNFUSED_PRODUCERS,
                                       activation_name, builtin_kind, integer_dtype)
from tf_bitpruning.quantizers import ActivationBitQuantizer
from tf_bitpruning.registry import BitPruneQuantizeRegistry


def unique_name(name: str, taken) -> str:
    """``name``, or ``name_1``, ``name_2``, ... : the first not in ``taken``."""
    candidate, i = name, 0
    while candidate in taken:
        i += 1
        candidate = f"{name}_{i}"
    return candidate


def separable_split(config: Dict, taken) -> Tuple[Dict, Dict]:
    """The layer configs (tf_keras or Keras 3, as ``config``) of a DepthwiseConv2D and a
    1x1 Conv2D that compute the SeparableConv2D of ``config`` one after the other:
    ``<name>_depthwise`` (no bias, linear) and ``<name>_pointwise`` (the bias, the
    activation, the activity regularizer), names not in ``taken``. Its weights are
    ``[depthwise_kernel]`` and ``[pointwise_kernel(, bias)]``, in the SeparableConv's order."""
    name = config["name"]
    common = {key: config[key] for key in ("trainable", "dtype", "data_format") if key in config}
    depthwise = dict(
        common, name=unique_name(f"{name}_depthwise", taken), kernel_size=config["kernel_size"],
        strides=config["strides"], padding=config["padding"], depth_multiplier=config["depth_multiplier"],
        dilation_rate=config["dilation_rate"], activation="linear", use_bias=False,
        depthwise_initializer=config["depthwise_initializer"],
        depthwise_regularizer=config["depthwise_regularizer"],
        depthwise_constraint=config["depthwise_constraint"])
    pointwise = dict(
        common, name=unique_name(f"{name}_pointwise", set(taken) | {depthwise["name"]}), filters=config["filters"],
        kernel_size=(1, 1), strides=(1, 1), padding="valid", dilation_rate=(1, 1),
        activation=config["activation"], use_bias=config["use_bias"],
        kernel_initializer=config["pointwise_initializer"], bias_initializer=config["bias_initializer"],
        kernel_regularizer=config["pointwise_regularizer"], bias_regularizer=config["bias_regularizer"],
        activity_regularizer=config["activity_regularizer"],
        kernel_constraint=config["pointwise_constraint"], bias_constraint=config["bias_constraint"])
    return depthwise, pointwise


class _SeparableConvSplit(_compat.Transform):
    """SeparableConv2D => DepthwiseConv2D -> Conv2D(1x1) (see :func:`separable_split`), both to
    be configured by the registry; one annotated with the user's own config is left whole
    (tfmot's ``SeparableConvQuantize``, with readable names)."""

    def __init__(self, taken: set):
        super().__init__()
        self._taken = taken  # layer names in use (the new ones are added)

    def pattern(self):
        return _compat.LayerPattern("|".join(sorted(SPLIT_LAYERS)))

    def replacement(self, match_layer):
        if match_layer.metadata.get("quantize_config") is not None:
            return match_layer
        depthwise, pointwise = separable_split(match_layer.layer["config"], self._taken)
        self._taken.update((depthwise["name"], pointwise["name"]))
        if match_layer.weights:
            weights = dict(match_layer.weights)
            values = [weights["depthwise_kernel:0"], weights["pointwise_kernel:0"]] + (
                [weights["bias:0"]] if pointwise["use_bias"] else [])
        else:
            values = [w for _, w in match_layer.names_and_weights]
        node = None
        for cls, config, names, part in ((keras.layers.DepthwiseConv2D, depthwise, ["depthwise_kernel:0"], values[:1]),
                                         (keras.layers.Conv2D, pointwise, ["kernel:0", "bias:0"], values[1:])):
            layer_config = _compat.serialize_layer(cls.from_config(config), use_legacy_format=True)
            layer_config["name"] = config["name"]
            # quantize_config None: the registry configures it (and the pass below may drop its output).
            node = _compat.LayerNode(layer_config, weights=collections.OrderedDict(zip(names, part)),
                                        input_layers=[node] if node else [], metadata={"quantize_config": None})
        return node

    def custom_objects(self):
        return {}


class _InputLayerQuantize(_compat.InputLayerQuantize):
    """InputLayer => InputLayer -> QuantizeLayer(ActivationBitQuantizer), for inputs of values
    (not integer ones: indices)."""

    def __init__(self, quantizer: ActivationBitQuantizer, skip: frozenset = frozenset()):
        super().__init__()
        self._quantizer = quantizer
        self._skip = skip  # inputs whose preprocessing chain quantizes at its end

    def replacement(self, match_layer):
        config = match_layer.layer["config"]
        if config["name"] in self._skip or integer_dtype(config.get("dtype")):
            return match_layer  # quantized at the chain's end, or indices (an Embedding's)
        quant_layer = _compat.QuantizeLayer(self._quantizer)
        layer_config = _compat.serialize_layer(quant_layer, use_legacy_format=True)
        layer_config["name"] = quant_layer.name
        return _compat.LayerNode(layer_config, input_layers=[match_layer])

    def custom_objects(self):
        return {"QuantizeLayer": _compat.QuantizeLayer,
                "ActivationBitQuantizer": ActivationBitQuantizer}


class BitPruneLayoutTransform(_compat.QuantizeLayoutTransform):
    """Splits SeparableConv2D layers, adds the input quantizers and drops output
    quantizers that a consumer re-quantizes right away, or, with ``quantize_outputs=False``,
    those of the model's outputs (see the module docstring)."""

    def __init__(self, registry: BitPruneQuantizeRegistry, quantize_inputs: bool = True,
                 quantize_outputs: bool = True):
        self._registry = registry
        self._quantize_inputs = quantize_inputs
        self._quantize_outputs = quantize_outputs

    def apply(self, model, layer_quantize_map):
        chains = {name: chain for name, chain in
                  ((layer.name, preprocessing_chain(layer, layer_quantize_map)) for layer in model.layers
                   if builtin_kind(layer) == "InputLayer") if chain}
        steps = [_SeparableConvSplit({layer.name for layer in model.layers})]
        if self._quantize_inputs:
            steps.append(_InputLayerQuantize(self._registry.activation_quantizer, frozenset(chains)))
        model, layer_quantize_map = _compat.ModelTransformer(
            model, steps, set(layer_quantize_map), layer_quantize_map).transform()
        for chain in chains.values():
            for layer, config in zip(chain, chain_configs(chain, self._registry, self._quantize_inputs)):
                entry = layer_quantize_map[layer.name]
                if entry.get("quantize_config") is None:
                    entry["quantize_config"] = config
        float_outputs = set() if self._quantize_outputs else float_output_layers(model.outputs)
        for layer in model.layers:
            entry = layer_quantize_map.get(layer.name)
            if entry is None or entry.get("quantize_config") is not None:
                continue  # not annotated, or the user chose the config
            if output_dropped(layer, layer_quantize_map, float_outputs) and self._registry.supports(layer):
                entry["quantize_config"] = self._registry.get_quantize_config(layer, quantize_outputs=False)
        return model, layer_quantize_map


# The layout rules, shared by tfmot's transform above and the Keras 3 graph rebuild.

def chain_configs(chain, registry: BitPruneQuantizeRegistry, quantize_inputs: bool) -> list:
    """Configs of a preprocessing chain: float, except the last layer, which quantizes
    its output as the input would (if inputs are quantized)."""
    configs = []
    for i, layer in enumerate(chain):
        config = registry.get_quantize_config(layer)
        last = i == len(chain) - 1 and quantize_inputs
        configs.append(config.replace(quantize_output=last))  # a training-only layer's too
    return configs


def float_output_layers(outputs) -> set:
    """Names of the layers whose output ``quantize_outputs=False`` leaves float: those that
    compute the model's ``outputs`` (its output tensors) and, where one is a Softmax or
    Activation layer (``OUTPUT_TAILS``), the layer it reads if nothing else reads that (the
    logits before a softmax). Their kernels stay quantized."""
    names = set()
    for x in outputs:
        front = frontend.frontend_for(x)
        layer = front.tensor_layer(x)
        names.add(layer.name)
        tail = builtin_kind(front.user_layer(layer), exact=False) in OUTPUT_TAILS
        before = frontend.producer(layer) if tail else None
        if before is not None and len(frontend.consumers(before)) == 1:
            names.add(before.name)
    return names


def unquantized_outputs(model) -> List[str]:
    """Names of the bit-pruned layers of ``model`` that compute a model output (or the logits
    before its softmax) with no quantizer on it (``quantize_outputs=False``): the export
    calibrates those at 8 bits."""
    front, registry = frontend.frontend_for(model), BitPruneQuantizeRegistry()

    def dropped(layer) -> bool:  # bit-pruned, and the registry would have quantized its output
        user = front.user_layer(layer)
        if user is layer or front.activation_tensors(layer) or not registry.supports(user):
            return False
        config = registry.get_quantize_config(user)
        return bool(config.activation_attrs or config.quantize_output)

    return [name for name in sorted(float_output_layers(model.outputs)) if dropped(model.get_layer(name))]


def output_dropped(layer, annotated, float_outputs, producer=None) -> bool:
    """Whether ``layer`` gets no output quantizer: a model output left float (a name in
    ``float_outputs``, :func:`float_output_layers`) or re-quantized by its consumer
    (:func:`output_requantized`)."""
    return layer.name in float_outputs or output_requantized(layer, annotated, producer)


def output_requantized(layer, annotated, producer=None) -> bool:
    """Whether ``layer``'s output quantizer is dropped: its only consumer (annotated,
    a name in ``annotated``) re-quantizes it right away. ``producer``: the layer that
    computes ``layer``'s output in the bit-pruned model, if another (a split's pointwise conv)."""
    consumers = frontend.consumers(layer)
    return (len(consumers) == 1 and _requantizes(consumers[0], producer or layer)
            and consumers[0].name in annotated)


def _requantizes(consumer, producer) -> bool:
    """Whether ``consumer`` re-quantizes ``producer``'s output right away, in a way the
    exported file reproduces (see ``layer_kinds.REQUANTIZING_CONSUMERS``)."""
    consumer_kind = builtin_kind(consumer, exact=False)
    if consumer_kind == "BatchNormalization":
        return (builtin_kind(producer, exact=False) in FOLDABLE_PRODUCERS
                and activation_name(getattr(producer, "activation", None)) in ("linear", "NoneType"))
    if consumer_kind == "Concatenate":
        return True
    if builtin_kind(producer, exact=False) in UNFUSED_PRODUCERS:
        return False
    if consumer_kind == "Activation":
        return activation_name(consumer.activation) in FUSED_ACTIVATIONS
    return consumer_kind in REQUANTIZING_CONSUMERS


def training_only_in_chains(layers) -> set:
    """Names of the training-only layers (augmentation, noise; ``layer_kinds.TRAINING_ONLY``)
    in the preprocessing chain of a model input, among ``layers``: they are annotated (so the
    input quantizer can follow them) where elsewhere they pass through unwrapped."""
    names = set()
    for layer in layers:
        if builtin_kind(layer) == "InputLayer":
            names.update(link.name for link in preprocessing_chain(layer, None)
                         if builtin_kind(link, exact=False) in TRAINING_ONLY)
    return names


def preprocessing_chain(input_layer, layer_quantize_map) -> list:
    """The annotated (in ``layer_quantize_map``; None: any) preprocessing and training-only
    layers that follow ``input_layer`` one after another."""
    chain, layer = [], input_layer
    while True:
        consumers = frontend.consumers(layer)
        if (len(consumers) != 1 or builtin_kind(consumers[0], exact=False) not in INPUT_CHAIN_LAYERS
                or (layer_quantize_map is not None and consumers[0].name not in layer_quantize_map)):
            return chain
        layer = consumers[0]
        chain.append(layer)
