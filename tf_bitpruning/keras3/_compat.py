"""Every private Keras 3 API the Keras 3 path uses, in one place (see also ``../_compat.py``)."""

from __future__ import annotations

from typing import Any, Callable, List

import keras


def functional_graph(model: keras.Model):
    """The functional graph of a built Sequential or functional model (a Sequential
    model keeps one once built with an input shape)."""
    if isinstance(model, keras.Sequential):
        graph = getattr(model, "_functional", None)
        if graph is None:
            raise ValueError(f"Sequential model '{model.name}' is not built with an input shape: "
                             f"start it with keras.Input(shape) (or call model.build(shape)).")
        return graph
    return model


def is_functional(model: keras.Model) -> bool:
    from keras.src.models.functional import Functional
    return isinstance(model, (Functional, keras.Sequential))


def run_through_graph(graph, inputs, operation_fn: Callable[[Any], Any]):
    """Calls ``operation_fn(layer)`` in place of every layer of ``graph`` on ``inputs``
    (what ``keras.models.clone_model`` does), returning the new outputs."""
    return graph._run_through_graph(inputs, operation_fn=operation_fn)


def input_names(graph) -> List[str]:
    """The names of a functional graph's input layers, in input order."""
    return [tensor_layer(x).name for x in graph.inputs]


def graph_operations(graph):
    """The layers and bare ops (``keras.ops`` calls) of a functional graph, in call order."""
    return list(graph.operations)


def lora_enabled(layer) -> bool:
    return bool(getattr(layer, "lora_enabled", False))


def quantization_mode(layer):
    """Keras 3's own quantization of a layer (``layer.quantize("int8")``), or None."""
    return getattr(layer, "quantization_mode", None)


def consumers(layer) -> List[Any]:
    """The layers that take a Keras 3 ``layer``'s output, one per call."""
    return [node.operation for node in layer._outbound_nodes]


def producers(layer, node_index: int = 0) -> List[Any]:
    """The layers feeding a Keras 3 ``layer``'s call ``node_index`` (empty at a model input)."""
    nodes = layer._inbound_nodes
    if len(nodes) <= node_index:
        return []
    return [t._keras_history.operation for t in nodes[node_index].input_tensors]


def tensor_layer(x):
    """The layer that computed a Keras 3 model tensor ``x`` (a model input's input layer)."""
    return x._keras_history.operation


def run_nodes(model, inputs: List[Any], call) -> List[Any]:
    """Re-runs the graph of a functional or Sequential Keras 3 ``model`` on ``inputs`` (one
    tensor per model input), with ``call(layer, args, kwargs)`` in place of every layer call
    (``kwargs`` as the call was recorded: Keras 3 records no ``training``). Returns the new
    outputs, one per model output."""
    graph = getattr(model, "_functional", None) or model
    outputs = run_through_graph(graph, inputs, lambda op: (lambda *args, **kwargs: call(op, args, kwargs)))
    return list(keras.tree.flatten(outputs))


class BuildBeforeTrace:
    """A ``keras.Model`` mixin: ``fit``/``evaluate``/``train_on_batch``/``test_on_batch``
    create the optimizer's and the compiled loss's and metrics' variables before the step
    function is traced, as Keras 3 does under a distribution strategy (``_symbolic_build``
    on one batch's shapes; the same variables, names and initial values).

    Without a strategy Keras 3 creates them inside the first trace, and a ``tf.function``
    that creates variables is traced a second time: on a large bit-pruned model (every
    tensor quantized, a few thousand ops per layer stack) that second trace of the whole
    train step (forward, gradients, one Adam update per variable) was half of ``fit``'s
    start-up time (MobileNetV2 under ``fit``: two traces of ~60 s each)."""

    def _maybe_symbolic_build(self, iterator=None, data_batch=None):
        if self._distribute_strategy is not None:
            return super()._maybe_symbolic_build(iterator=iterator, data_batch=data_batch)
        if data_batch is None:
            for _, _, data in iterator:  # the TF trainer's epoch iterator: (begin, end, tf iterator)
                data_batch = next(data)
                break
        return self._symbolic_build(data_batch=data_batch)
