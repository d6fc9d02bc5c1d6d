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
    return [x._keras_history.operation.name for x in graph.inputs]


def graph_operations(graph):
    """The layers and bare ops (``keras.ops`` calls) of a functional graph, in call order."""
    return list(graph.operations)


def lora_enabled(layer) -> bool:
    return bool(getattr(layer, "lora_enabled", False))


def quantization_mode(layer):
    """Keras 3's own quantization of a layer (``layer.quantize("int8")``), or None."""
    return getattr(layer, "quantization_mode", None)
