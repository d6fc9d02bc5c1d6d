"""``bitprune_model`` and ``freeze_bitlengths``' clone for Keras 3 models.

The same decisions as tfmot's ``quantize_apply`` with ``BitPruneQuantizeScheme``:
the registry gives each layer its config, an output quantizer is dropped where
the only consumer re-quantizes right away, preprocessing after an input runs in
float with the input quantizer at its end, a SeparableConv2D runs as a depthwise
and a pointwise conv (``<name>_depthwise``, ``<name>_pointwise``). Only the graph
surgery differs: the model is re-run layer by layer (``keras.models.clone_model``'s
mechanism) with wrapped copies of its layers.
"""

from __future__ import annotations

from typing import Any, Callable, Dict, Sequence, Tuple

import keras

from tf_bitpruning import costs, flatten, frontend, layout
from tf_bitpruning.configs import BitPruneQuantizeConfig
from tf_bitpruning.keras3 import _compat, ops
from tf_bitpruning.keras3.layers import BitPrunedModel, BitPruneInputQuantizer, BitPruneWrapper
from tf_bitpruning.layer_kinds import SPLIT_LAYERS, builtin_kind, integer_dtype
from tf_bitpruning.quantizers import ActivationBitQuantizer, WeightBitQuantizer
from tf_bitpruning.registry import BitPruneQuantizeRegistry, is_pass_through, is_quantizable


MIN_VERSION = (3, 10)


def check_keras() -> None:
    """Keras 3 must be recent enough and run on the TensorFlow backend (the quantizer
    math and the exporter are TensorFlow)."""
    version = tuple(int(p) for p in keras.__version__.split(".")[:2])
    if version < MIN_VERSION:
        raise RuntimeError(f"tf_bitpruning needs Keras >= {'.'.join(map(str, MIN_VERSION))} for Keras 3 "
                           f"models, found {keras.__version__}: pip install -U keras.")
    if keras.backend.backend() != "tensorflow":
        raise RuntimeError(
            f"tf_bitpruning runs Keras 3 models on the TensorFlow backend only, and Keras is on "
            f"'{keras.backend.backend()}': set KERAS_BACKEND=tensorflow before importing keras. (The "
            f"quantizers are TensorFlow ops with a custom gradient, and the export is TFLite.)")


def check_model(model, what: str, allow_nested: bool = False) -> None:
    """Raises unless ``model`` is a built Sequential or functional Keras 3 model of layers
    (nested models only with ``allow_nested``: :func:`tf_bitpruning.flatten.flatten`)."""
    check_keras()
    if not isinstance(model, keras.Model):
        raise TypeError(f"{what}: expected a Keras model, got {type(model).__name__}.")
    if not _compat.is_functional(model):
        raise ValueError(
            f"{what}: '{model.name}' is a subclassed model ({type(model).__name__}); only Sequential and "
            f"functional models can be bit-pruned. Rebuild it with the functional API "
            f"(keras.Input -> layers -> keras.Model).")
    if not model.built:
        raise ValueError(f"{what}: model '{model.name}' is not built. Give it an input shape "
                         f"(keras.Input(shape)) or call model.build(input_shape).")
    graph = _compat.functional_graph(model)
    for op in _compat.graph_operations(graph):
        if isinstance(op, keras.Model):
            if allow_nested:
                check_model(op, what, allow_nested=True)
                continue
            raise ValueError(
                f"{what}: model '{model.name}' contains nested model '{op.name}'; tfbp.bitprune_model "
                f"flattens it (tfbp.flatten.flatten).")
        why = ops.unsupported_op(op) if ops.is_raw_op(op) else None
        if why:
            raise ValueError(f"{what}: model '{model.name}' {why}.")


def _clone(layer) -> keras.layers.Layer:
    return layer.__class__.from_config(layer.get_config())


def _splits(layers, skip: set) -> Dict[str, Tuple[keras.layers.Layer, keras.layers.Layer]]:
    """``{SeparableConv2D name: (DepthwiseConv2D, Conv2D)}``: the (new, unbuilt) layers that
    compute each SeparableConv2D that is bit-pruned, one after the other, so that the tensor
    between its kernels gets a learned grid (``layout.separable_split``, as on the tf_keras path)."""
    taken = {layer.name for layer in layers}
    splits = {}
    for layer in layers:
        if layer.name not in skip and builtin_kind(layer) in SPLIT_LAYERS:
            depthwise, pointwise = layout.separable_split(layer.get_config(), taken)
            taken.update((depthwise["name"], pointwise["name"]))
            splits[layer.name] = (keras.layers.DepthwiseConv2D.from_config(depthwise),
                                  keras.layers.Conv2D.from_config(pointwise))
    return splits


def _configs(graph, registry, skip: set, quantize_inputs: bool, splits=None, quantize_outputs: bool = True):
    """``{layer name: config}`` for the layers to wrap (a split layer's by the names of its
    parts, see :func:`_splits`), and the inputs whose own quantizer moves to the end of
    their preprocessing chain (scheme's layout rules)."""
    splits = splits or {}
    layers = _compat.graph_operations(graph)
    chained = layout.training_only_in_chains(layers)
    annotated = {layer.name for layer in layers
                 if layer.name not in skip and (is_quantizable(layer) or layer.name in chained)}
    float_outputs = set() if quantize_outputs else layout.float_output_layers(graph.outputs)
    configs: Dict[str, BitPruneQuantizeConfig] = {}
    chained_inputs = set()
    for layer in layers:
        chain = layout.preprocessing_chain(layer, annotated) if builtin_kind(layer) == "InputLayer" else []
        if chain:
            chained_inputs.add(layer.name)
            configs.update(zip([link.name for link in chain], layout.chain_configs(chain, registry, quantize_inputs)))
    for layer in layers:
        if layer.name in splits:
            # The depthwise output (read by the pointwise conv alone) keeps its quantizer: the inner grid.
            depthwise, pointwise = splits[layer.name]
            configs[depthwise.name] = registry.get_quantize_config(depthwise)
            configs[pointwise.name] = registry.get_quantize_config(
                pointwise, quantize_outputs=not layout.output_dropped(layer, annotated, float_outputs, pointwise))
        elif layer.name in annotated and layer.name not in configs:
            configs[layer.name] = registry.get_quantize_config(
                layer, quantize_outputs=not layout.output_dropped(layer, annotated, float_outputs))
    return configs, chained_inputs


def bitprune_model(model: keras.Model, regularization: float, weighting: str, *,
                   skip_layers: Sequence[str], weight_quantizer: WeightBitQuantizer,
                   activation_quantizer: ActivationBitQuantizer, quantize_inputs: bool,
                   quantize_outputs: bool = True) -> BitPrunedModel:
    """A bit-pruned copy of a Keras 3 Sequential or functional model (see module doc), nested
    models flattened first (:func:`tf_bitpruning.flatten.flatten`)."""
    check_model(model, "bitprune_model", allow_nested=True)
    skip = set(skip_layers)
    model = lift_ops(flatten.flatten(model, keep=skip))
    graph = _compat.functional_graph(model)
    layers = _compat.graph_operations(graph)
    unknown = skip - {layer.name for layer in layers}
    if unknown:
        raise ValueError(f"bitprune_model: skip_layers names no layer of the model: {sorted(unknown)}.")
    registry = BitPruneQuantizeRegistry(weight_quantizer, activation_quantizer)
    problems = [f"  - '{layer.name}' ({type(layer).__name__}): {registry.unsupported_reason(layer)}"
                for layer in layers if layer.name not in skip and registry.unsupported_reason(layer)]
    if problems:
        raise ValueError(
            "bitprune_model: these layers cannot be bit-pruned automatically:\n" + "\n".join(problems)
            + "\nLeave them in float with skip_layers=[...names...].")
    splits = _splits(layers, skip)
    configs, chained = _configs(graph, registry, skip, quantize_inputs, splits, quantize_outputs)
    input_names = _compat.input_names(graph)
    indices = {name for name, x in zip(input_names, graph.inputs) if integer_dtype(x.dtype)}  # an Embedding's
    quantized = [name for name in input_names if quantize_inputs and name not in chained | indices
                 and _feeds_annotated(graph, name, skip)]

    def entry(name, inp):
        if name not in quantized:
            return inp
        index = quantized.index(name)  # tfmot's names: quantize_layer, quantize_layer_1, ...
        return BitPruneInputQuantizer(activation_quantizer,
                                      name="quantize_layer" + (f"_{index}" if index else ""))(inp)

    def twin_of(layer):
        if layer.name in splits:
            depthwise, pointwise = (BitPruneWrapper(part, configs[part.name]) for part in splits[layer.name])
            return lambda x, **kwargs: pointwise(depthwise(x))
        config = configs.get(layer.name)
        return BitPruneWrapper(_clone(layer), config) if config is not None else _clone(layer)

    result, twins = rerun(graph, twin_of, entry, name=model.name)
    for layer in _compat.graph_operations(graph):
        if layer.name in splits:
            depthwise, pointwise = splits[layer.name]
            weights = layer.get_weights()  # depthwise kernel, pointwise kernel (, bias)
            depthwise.set_weights(weights[:1])
            pointwise.set_weights(weights[1:])
        elif layer.name in twins:
            twin = twins[layer.name]
            (twin.layer if isinstance(twin, BitPruneWrapper) else twin).set_weights(layer.get_weights())
    costs.attach_bit_loss(result, regularization, weighting)
    return result


def _feeds_annotated(graph, input_name: str, skip: set) -> bool:
    """Whether a model input gets a quantizer: as under tfmot (``quantize_apply``), when a
    layer it feeds is annotated (not skipped, not a reshape-like op)."""
    (layer,) = [op for op in _compat.graph_operations(graph) if op.name == input_name]
    return any(c.name not in skip and not is_pass_through(c) for c in frontend.consumers(layer))


def lift_ops(model: keras.Model) -> keras.Model:
    """A copy of ``model`` with each raw ``keras.ops`` call as a
    :class:`~tf_bitpruning.keras3.ops.KerasOpLambda` (its layers cloned, weights copied: a
    shared layer would count the copy's consumers too), or ``model`` itself if it has none."""
    graph = _compat.functional_graph(model)
    if not any(ops.is_raw_op(op) for op in _compat.graph_operations(graph)):
        return model
    layer_names = {op.name for op in _compat.graph_operations(graph) if not ops.is_raw_op(op)}

    def lifted(op):
        if not ops.is_raw_op(op):
            return _clone(op)

        def call(*args, **kwargs):
            name = layout.unique_name(op.name, layer_names)  # a layer may have an op's name
            layer_names.add(name)
            layer, tensor = ops.lift(op, args, kwargs, name)
            return layer(tensor)
        return call

    result, twins = rerun(graph, lifted, make_model=keras.Model, name=model.name)
    for op in _compat.graph_operations(graph):
        if not ops.is_raw_op(op) and op.name in twins:
            twins[op.name].set_weights(op.get_weights())
    return result


def rerun(graph, twin_of: Callable[[Any], Any], entry: Callable[[str, Any], Any] = lambda name, x: x,
          make_input: Callable[..., Any] = keras.Input, make_model: Callable[..., Any] = None, name: str = None,
          drop_training: bool = False):
    """Re-runs a functional ``graph`` on new inputs (``make_input``, passed through
    ``entry(input name, tensor)``) with ``twin_of(layer)``, made once per layer, in place
    of each layer (``keras.models.clone_model``'s mechanism). Returns the new model
    (``make_model``, default :class:`BitPrunedModel`) and ``{layer name: twin}``.
    ``drop_training``: calls without the ``training`` argument Keras 3 records (the call's
    default, ``True`` for the ``Random*`` layers), which a tf_keras twin would keep for good
    (Keras 3 overrides it with the model's own ``training``)."""
    twins: Dict[str, Any] = {}

    def operation_fn(layer):
        if layer.name not in twins:
            twins[layer.name] = twin_of(layer)
        twin = twins[layer.name]
        if drop_training:
            return lambda *args, **kwargs: twin(*args, **{k: v for k, v in kwargs.items() if k != "training"})
        return twin

    names = _compat.input_names(graph)
    inputs = [make_input(batch_shape=x.shape, dtype=x.dtype, name=name) for x, name in zip(graph.inputs, names)]
    outputs = _compat.run_through_graph(graph, [entry(n, x) for n, x in zip(names, inputs)], operation_fn)
    make_model = make_model or BitPrunedModel
    # One input as itself (Keras 3 matches call arguments to this structure).
    return make_model(inputs[0] if len(inputs) == 1 else inputs, outputs, name=name or graph.name), twins


def clone_frozen(model: BitPrunedModel, freeze: Callable[[BitPruneQuantizeConfig, str], BitPruneQuantizeConfig],
                 freeze_quantizer: Callable[[ActivationBitQuantizer, str], ActivationBitQuantizer]) -> BitPrunedModel:
    """A copy of a bit-pruned Keras 3 model with each wrapper's config passed through
    ``freeze(config, layer name)`` and each input quantizer's through
    ``freeze_quantizer``; every variable (weights, bitlengths, ranges) copied by name.
    The caller attaches the bit loss."""
    def frozen_twin(layer):
        if isinstance(layer, BitPruneWrapper):
            inner = layer.layer.__class__.from_config(layer.inner_config())
            return BitPruneWrapper(inner, freeze(layer.quantize_config, layer.name), name=layer.name)
        if isinstance(layer, BitPruneInputQuantizer):
            return BitPruneInputQuantizer(freeze_quantizer(layer.quantizer, layer.name), name=layer.name)
        return _clone(layer)

    graph = _compat.functional_graph(model)
    result, twins = rerun(graph, frozen_twin, name=model.name)
    for layer in _compat.graph_operations(graph):
        if layer.name in twins:
            _copy_variables(layer, twins[layer.name])
    return result


def _copy_variables(source: keras.layers.Layer, target: keras.layers.Layer) -> None:
    """Copies every variable by its name within the layer (a bitlength that turns
    non-trainable moves in the layer's variable order; paths differ between a built
    and a loaded model)."""
    by_name = {v.name: v for v in source.variables}
    if len(by_name) != len(source.variables) and len(source.variables) == len(target.variables) \
            and all(tuple(a.shape) == tuple(b.shape) for a, b in zip(source.variables, target.variables)):
        # Names repeat (a float MultiHeadAttention's sublayers: kernel, bias, ...): one class, in order.
        for s, t in zip(source.variables, target.variables):
            t.assign(s)
        return
    if len(by_name) != len(source.variables) or len(source.variables) != len(target.variables):
        raise ValueError(f"Layer '{target.name}': cannot match its {len(target.variables)} variables "
                         f"to the source layer's {len(source.variables)}.")
    for v in target.variables:
        if v.name not in by_name:
            raise ValueError(f"Layer '{target.name}': no variable '{v.name}' in the source layer to copy.")
        v.assign(by_name[v.name])
