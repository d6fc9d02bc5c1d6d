"""Nested models flattened: a functional or Sequential model used as a layer (a
``keras.applications`` backbone in the transfer-learning recipe), at any depth, becomes
its layers in one flat functional model, for tf_keras and Keras 3 alike.

Each layer of the result is a copy of one leaf layer (same config, same weights), called
on the outer tensors, so that the layout rules see across the boundary: a BN after the
backbone's last conv still folds, an input quantizer still moves past preprocessing.

- ``base(x, training=False)``: under tf_keras the call records it, and every layer of
  ``base`` that takes ``training`` is called with ``training=False`` in the flat model
  (recorded on its own call, kept by tfmot's clone), except BatchNormalization: its copy
  is ``trainable=False`` instead, which keeps it in inference mode (moving statistics)
  while the model trains. (``training=False`` would reach its wrapper, whose output
  quantizer would then never learn its range; as in Keras with a frozen base, its scale
  and offset are not trained either.) Keras 3 records no ``training`` argument (its own
  ``fit`` updates such a backbone's BN statistics); the flat model does what the nested one
  does. Under both, ``base.trainable = False`` freezes its layers (configs keep it).
- names: a layer keeps its name, unless the name is taken in the flat model (by a layer of
  the outer model, or of an inner model met earlier: two backbones with a ``conv1`` each);
  then it is ``<inner model name>.<layer name>`` (Keras 3 refuses ``/`` in layer names).
- ``MultiHeadAttention``: each call is expanded into primitive layers whose tensors bit
  pruning learns (:mod:`tf_bitpruning.attention`), unless its name is in ``keep``
  (``skip_layers``: it stays whole, in float).
"""

from __future__ import annotations

from typing import Any, Dict, List, Optional, Sequence, Set, Tuple

from tf_bitpruning import attention
from tf_bitpruning.frontend import frontend_for
from tf_bitpruning.layer_kinds import builtin_kind
from tf_bitpruning.layout import unique_name


def is_nested(model) -> bool:
    """Whether ``model`` has a model among its layers."""
    cls = frontend_for(model).model_class
    return any(isinstance(layer, cls) for layer in model.layers)


def _expands(layer, keep) -> bool:
    return builtin_kind(layer) == "MultiHeadAttention" and layer.name not in keep


def _needs_rebuild(model, keep) -> bool:
    """Whether ``model`` nests models or has an attention layer to expand (at any depth)."""
    cls = frontend_for(model).model_class
    return any(isinstance(layer, cls) or _expands(layer, keep) for layer in model.layers)


def _accepts_training(layer) -> bool:
    import inspect
    try:
        return "training" in inspect.signature(layer.call).parameters
    except (TypeError, ValueError):
        return False


def _leaf_names(model, cls) -> List[str]:
    """The names of the outer model's own (not nested) layers, which keep their names."""
    return [layer.name for layer in model.layers if not isinstance(layer, cls)]


def flatten(model, keep: Sequence[str] = ()):
    """A flat functional copy of ``model`` if it nests models or has attention layers to
    expand (those not named in ``keep``), else ``model`` itself. The copy has the same
    inputs, outputs, name and weights, and computes the same outputs (see module doc)."""
    keep = set(keep)
    if not _needs_rebuild(model, keep):
        return model
    front = frontend_for(model)
    cls = front.model_class
    taken: Set[str] = set(_leaf_names(model, cls))
    copies: Dict[int, Tuple[Any, Any]] = {}  # id(leaf layer) -> (copy, leaf)

    def copy_of(layer, owner, inference_bn=False):
        if id(layer) not in copies:
            config = layer.get_config()
            if inference_bn:
                config["trainable"] = False  # inference mode without telling its wrapper (below)
            name = layer.name
            if owner is not None and name in taken:  # an inner layer whose name is taken
                name = unique_name(f"{owner}.{name}", taken)
            taken.add(name)
            config["name"] = name
            copies[id(layer)] = (layer.__class__.from_config(config), layer)
        return copies[id(layer)][0]

    def new_name(base: str) -> str:
        name = unique_name(base, taken)
        taken.add(name)
        return name

    def runner(owner: Optional[str], inference: bool):
        def call(layer, args, kwargs):
            if isinstance(layer, cls):
                inner = inference or kwargs.get("training") is False
                inputs = _flat(args)
                outputs = front.run_nodes(layer, inputs, runner(layer.name, inner))
                return outputs[0] if len(outputs) == 1 else outputs
            if _expands(layer, keep):
                return attention.expand(layer, args, kwargs, new_name, front.attention_pieces)
            kwargs = dict(kwargs)
            inference_bn = inference and builtin_kind(layer, exact=False) == "BatchNormalization"
            if inference and not inference_bn and _accepts_training(layer):
                kwargs["training"] = False
            return copy_of(layer, owner, inference_bn)(*args, **kwargs)
        return call

    inputs = [_input_like(model, x) for x in model.inputs]
    outputs = front.run_nodes(model, inputs, runner(None, False))
    flat = cls(inputs[0] if len(inputs) == 1 else inputs, outputs[0] if len(outputs) == 1 else outputs,
               name=model.name)
    for copy, leaf in copies.values():
        if hasattr(copy, "set_weights"):  # not a Keras 3 raw op (``x + 3.0``): no weights
            copy.set_weights(leaf.get_weights())
    return flat


def _flat(args) -> List[Any]:
    import tensorflow as tf
    return [t for t in tf.nest.flatten(list(args)) if hasattr(t, "shape")]


def _input_like(model, x):
    """A new model input like ``x`` (its shape, dtype and input layer name)."""
    front = frontend_for(model)
    return front.make_input(batch_shape=x.shape, dtype=x.dtype, name=front.tensor_layer(x).name)
