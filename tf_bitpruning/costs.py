"""Which tensors are quantized, and what each costs.

The one place that walks a bit-pruned model: every later module (bit loss,
callback, freezing, reports, export) asks :func:`quantized_tensors`.

Weightings of the average bitlength ``R = Σ c_t n_t / Σ c_t``:

- ``"uniform"``: ``c_t = 1``, the average per-tensor bitlength (the paper's metric);
- ``"memory"``: ``c_t`` = elements (weights: parameters; activations: per example);
- ``"bops"``: bit-operations ``MACs · n_w · n_a_in`` of every kernel, reported as
  the equivalent bitlength ``sqrt(Σ MACs n_w n_a / Σ MACs)`` so that it reads in
  bits like the other two (a model at b bits everywhere scores b).
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable, Dict, List, Optional

import numpy as np
import tensorflow as tf
import tf_keras as keras

from tf_bitpruning.frontend import frontend_for, producer
from tf_bitpruning.quantizers import BitlengthQuantizer, variable_key
from tf_bitpruning.layer_kinds import TABLE_LAYERS, builtin_kind

WEIGHTINGS = ("uniform", "memory", "bops")
KINDS = (None, "weights", "activations")
# Bits assumed for a kernel whose input is not quantized (a float input).
FLOAT_BITS = 32.0


@dataclasses.dataclass(eq=False)
class QuantizedTensor:
    """One quantized tensor of a bit-pruned model and its cost."""

    name: str            # "conv2d/weights", "conv2d/activations"
    layer: str           # the user's layer name, "conv2d"
    kind: str            # "weights" or "activations"
    quantizer: BitlengthQuantizer
    variables: Dict[str, tf.Variable]
    elements: int        # weights: parameters; activations: elements per example
    macs: int = 0        # weights: multiply-accumulates per example
    input: Optional["QuantizedTensor"] = None  # weights: the activation feeding the layer
    wrapper: str = ""    # the layer's name in the bit-pruned model, "quant_conv2d"
    attr: str = ""       # weights: the kernel attribute, "kernel" or "depthwise_kernel"
    weight: Optional[tf.Variable] = None  # weights: the float kernel it quantizes

    @property
    def bits_variable(self) -> tf.Variable:
        return self.variables["bits"]

    def bits(self) -> tf.Tensor:
        """The bitlength ``n`` (mean over channels for per-channel bitlengths)."""
        n = self.quantizer.bitlength(self.variables)
        return n if n.shape.rank == 0 else tf.reduce_mean(n)

    def input_bits(self) -> tf.Tensor:
        return self.input.bits() if self.input is not None else tf.constant(FLOAT_BITS)


def _output_shape(layer):
    shape = frontend_for(layer).output_shape(layer)
    return shape[0] if isinstance(shape, list) else shape


def _output_elements(layer) -> int:
    # A dimension Keras does not know (a sequence length Keras 3's EinsumDense left None) counts once.
    return int(np.prod([d if d is not None else 1 for d in _output_shape(layer)[1:]]))


def activation_tensors(layer) -> List[tuple]:
    """(quantizer, variables) of the activation quantizers a layer owns."""
    return frontend_for(layer).activation_tensors(layer)


def weight_tensors(layer) -> List[tuple]:
    """(weight, quantizer, variables, attribute) of the kernels a layer quantizes."""
    return frontend_for(layer).weight_tensors(layer)


def is_input_quantizer(layer) -> bool:
    """Whether ``layer`` quantizes a model input (tfmot's ``QuantizeLayer`` or ours)."""
    return frontend_for(layer).is_input_quantizer(layer)


def user_layer(layer):
    """The user's layer inside a wrapper (tfmot's or ours), or the layer itself."""
    return frontend_for(layer).user_layer(layer)


def quantized_tensors(model: keras.Model) -> List[QuantizedTensor]:
    """Every tensor of ``model`` quantized with a learned bitlength, in layer order."""
    if not getattr(model, "built", False):
        return []
    activations: Dict[str, QuantizedTensor] = {}
    result: List[QuantizedTensor] = []
    for layer in model.layers:
        user_name = user_layer(layer).name
        owned = [(q, v) for q, v in activation_tensors(layer) if isinstance(q, BitlengthQuantizer)]
        # The last is the layer's output; one before it quantizes the input of an activation
        # inside the layer (a swish's or gelu's), a tensor of the file as well.
        inner = [QuantizedTensor(f"{user_name}/pre_activation" if len(owned) == 2 else
                                 f"{user_name}/pre_activation_{i}", user_name, "activations", q, v,
                                 _output_elements(layer), wrapper=layer.name)
                 for i, (q, v) in enumerate(owned[:-1])]
        if owned:
            quantizer, variables = owned[-1]
            activations[layer.name] = QuantizedTensor(
                f"{user_name}/activations", user_name, "activations", quantizer, variables,
                _output_elements(layer), wrapper=layer.name)

        weights = [(w, q, v, attr) for w, q, v, attr in weight_tensors(layer)
                   if isinstance(q, BitlengthQuantizer)]
        if weights:
            feeding = producer(layer)
            while feeding is not None and feeding.name not in activations:
                feeding = producer(feeding)
            source = activations.get(feeding.name) if feeding is not None else None
            out = _output_shape(layer)
            # A table (an Embedding's) is read by lookup: no multiply-accumulates.
            positions = 0 if builtin_kind(user_layer(layer), exact=False) in TABLE_LAYERS else \
                _output_elements(layer) // max(int(out[-1]), 1)
            for w, q, v, attr in weights:
                name = f"{user_name}/weights" if len(weights) == 1 else f"{user_name}/{attr}"
                elements = int(np.prod(w.shape))
                result.append(QuantizedTensor(name, user_name, "weights", q, v, elements,
                                              elements * positions, source, layer.name, attr, w))
        result.extend(inner)
        if layer.name in activations:
            result.append(activations[layer.name])
    return result


def select(tensors: List[QuantizedTensor], kind: Optional[str]) -> List[QuantizedTensor]:
    """The tensors of ``kind`` (None: all; ``"weights"``, ``"activations"``)."""
    if kind not in KINDS:
        raise ValueError(f"kind must be one of {KINDS}, got {kind!r}.")
    return [t for t in tensors if kind is None or t.kind == kind]


def average_bits_tensor(tensors: List[QuantizedTensor], weighting: str = "uniform",
                        kind: Optional[str] = None,
                        bits: Optional[Callable[[QuantizedTensor], Any]] = None) -> tf.Tensor:
    """The differentiable weighted average bitlength ``R`` (see module doc).

    ``bits(t)`` gives each tensor's bitlength (default: its learned ``t.bits()``);
    pass e.g. ``lambda t: t.quantizer.min_bits`` for the lowest reachable average.
    """
    check_weighting(weighting)
    bits = bits or QuantizedTensor.bits

    def value(t):
        return tf.cast(bits(t), tf.float32) if t is not None else tf.constant(FLOAT_BITS)

    if weighting == "bops":
        if kind == "activations":
            raise ValueError("weighting='bops' is a cost of kernels and their inputs; "
                             "use kind=None or kind='weights'.")
        kernels = [t for t in tensors if t.kind == "weights"]
        if not kernels:
            raise ValueError("weighting='bops' needs at least one quantized kernel.")
        macs = np.array([t.macs for t in kernels], np.float32)
        bops = tf.add_n([float(m) * value(t) * value(t.input) for m, t in zip(macs, kernels)])
        return tf.sqrt(bops / float(macs.sum()))
    chosen = select(tensors, kind)
    if not chosen:
        raise ValueError(f"The model has no quantized {kind or 'tensors'} with a learned bitlength.")
    if weighting == "uniform":
        return tf.add_n([value(t) for t in chosen]) / float(len(chosen))
    total = float(sum(t.elements for t in chosen))
    return tf.add_n([(t.elements / total) * value(t) for t in chosen])


def check_weighting(weighting: str) -> None:
    if weighting not in WEIGHTINGS:
        raise ValueError(f"Unknown weighting {weighting!r}; use one of {WEIGHTINGS}.")


def bitlengths(model: keras.Model) -> Dict[str, float]:
    """The current bitlength of every quantized tensor, e.g.
    ``{"conv2d/weights": 5.31, "conv2d/activations": 3.92}``."""
    tensors = quantized_tensors(model)
    require_tensors(model, tensors)
    return {t.name: float(t.bits()) for t in tensors}


def average_bits(model: keras.Model, kind: Optional[str] = None, weighting: str = "uniform") -> float:
    """The weighted average bitlength of ``model``.

    Args:
      kind: None (all tensors), ``"weights"`` or ``"activations"``.
      weighting: ``"uniform"``, ``"memory"`` or ``"bops"`` (see :mod:`costs`).
    """
    tensors = quantized_tensors(model)
    require_tensors(model, tensors)
    return float(average_bits_tensor(tensors, weighting, kind))


def require_tensors(model, tensors: List[QuantizedTensor]) -> None:
    """Raises unless ``model`` has tensors with a learned bitlength (``tensors``)."""
    if not tensors:
        raise ValueError(
            f"Model '{getattr(model, 'name', model)}' has no tensors with a learned bitlength: "
            f"make it with tfbp.bitprune_model(model) first.")


class BitLoss(tf.Module):
    """``λ · R``: the bit loss attached to a bit-pruned model.

    ``regularization`` (λ) is a variable, so callbacks can change it during
    ``fit`` and checkpoints keep it.
    """

    def __init__(self, tensors: List[QuantizedTensor], regularization: float, weighting: str):
        super().__init__(name="bit_loss")
        check_regularization(regularization)
        check_weighting(weighting)
        self.regularization = tf.Variable(float(regularization), trainable=False,
                                          dtype=tf.float32, name="regularization")
        # The objective as codes (see `objective_codes`), so that SavedModel and checkpoints keep it.
        self.objective = tf.Variable(objective_codes(weighting, None), trainable=False,
                                     dtype=tf.int64, name="objective")
        self.weighting = weighting
        self.kind = None  # None: all tensors; "weights"/"activations": only those
        self._inventory = _Inventory(tensors)
        # Annealing (BitBudget): every learned n slides to an integer as the weight
        # goes 0 -> 1. Variables, so checkpoints carry a run that is half-way.
        self.anneal_weight = tf.Variable(0.0, trainable=False, dtype=tf.float32, name="anneal_weight")
        self.anneal_bits = [tf.Variable(tf.zeros(t.bits_variable.shape), trainable=False,
                                        name=f"anneal_bits_{i}") for i, t in enumerate(tensors)]

    def anneal(self, enabled: bool = True) -> bool:
        """Routes every learned bitlength through ``anneal_weight`` and
        ``anneal_bits`` (see ``BitlengthQuantizer.anneal``), or stops doing so.
        Returns whether anything changed: the model's functions must then be traced again."""
        changed = False
        for t, bits in zip(self.tensors, self.anneal_bits):
            q, key = t.quantizer, variable_key(t.bits_variable)
            current = (q.anneal or {}).get(key)
            if enabled and not q.frozen:
                if current is None or current[1] is not bits:
                    if q.anneal is None:
                        q.anneal = {}
                    q.anneal[key] = (self.anneal_weight, bits)
                    changed = True
            elif current is not None:
                del q.anneal[key]
                changed = True
        return changed

    @property
    def tensors(self) -> List[QuantizedTensor]:
        return self._inventory.tensors

    def __call__(self) -> tf.Tensor:
        return self.regularization * average_bits_tensor(self.tensors, self.weighting, self.kind)

    # -- the objective (weighting, kind), mirrored into the `objective` variable --
    @property
    def weighting(self) -> str:
        """``"uniform"``, ``"memory"`` or ``"bops"``: how the bitlengths are averaged."""
        return self._weighting

    @weighting.setter
    def weighting(self, value: str) -> None:
        check_weighting(value)
        self._weighting = value
        self._store_objective()

    @property
    def kind(self) -> Optional[str]:
        """None (all tensors), ``"weights"`` or ``"activations"``: which tensors are regularized."""
        return self._kind

    @kind.setter
    def kind(self, value: Optional[str]) -> None:
        if value not in KINDS:
            raise ValueError(f"kind must be one of {KINDS}, got {value!r}.")
        self._kind = value
        self._store_objective()

    def _store_objective(self) -> None:
        weighting, kind = getattr(self, "_weighting", None), getattr(self, "_kind", None)
        if weighting is not None:
            self.objective.assign(objective_codes(weighting, kind))


def objective_codes(weighting: str, kind: Optional[str]) -> List[int]:
    """``[index in WEIGHTINGS, index in KINDS]``: how a :class:`BitLoss` saves its
    objective in a variable (both tuples only ever grow at the end)."""
    check_weighting(weighting)
    if kind not in KINDS:
        raise ValueError(f"kind must be one of {KINDS}, got {kind!r}.")
    return [WEIGHTINGS.index(weighting), KINDS.index(kind)]


def objective_from_codes(codes) -> tuple:
    """``(weighting, kind)`` from :func:`objective_codes`' pair (e.g. a loaded variable)."""
    w, k = (int(c) for c in np.asarray(codes).ravel())
    if not (0 <= w < len(WEIGHTINGS) and 0 <= k < len(KINDS)):
        raise ValueError(f"Unknown bit-loss objective codes {[w, k]}: the model was saved by a newer "
                         f"tf_bitpruning; upgrade it to load this model.")
    return WEIGHTINGS[w], KINDS[k]


class _Inventory:
    """A plain holder, so the tensor list is not tracked as checkpoint state twice."""

    def __init__(self, tensors):
        self.tensors = list(tensors)


def check_regularization(regularization: float) -> None:
    if not np.isfinite(regularization) or regularization < 0:
        raise ValueError(f"regularization (λ) must be a finite number >= 0, got {regularization}.")


def attach_bit_loss(model: keras.Model, regularization: float, weighting: str = "uniform") -> BitLoss:
    """Adds ``λ · R`` to ``model.losses`` (or updates the one already attached)."""
    existing = get_bit_loss(model)
    if existing is not None:
        check_regularization(regularization)
        check_weighting(weighting)
        existing.regularization.assign(float(regularization))
        existing.weighting = weighting
        return existing
    tensors = quantized_tensors(model)
    require_tensors(model, tensors)
    loss = BitLoss(tensors, regularization, weighting)
    # Not a Keras attribute: λ must not show up in model.weights / get_weights().
    object.__setattr__(model, "_bitprune_loss", loss)
    frontend_for(model).keep_bit_loss(model, loss)
    return loss


def get_bit_loss(model: keras.Model) -> Optional[BitLoss]:
    """The :class:`BitLoss` attached to ``model``, if any."""
    return getattr(model, "_bitprune_loss", None)
