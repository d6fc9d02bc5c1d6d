"""The Keras 3 layers of a bit-pruned model: a wrapper, an input quantizer, the model.

They place quantizers exactly where tfmot's ``QuantizeWrapperV2``/``QuantizeLayer``
do on the tf_keras path (same configs, same quantizer objects and variable names),
so both paths learn, freeze, report and export the same way.
"""

from __future__ import annotations

import contextlib
import inspect
from typing import Any, Dict, List, Tuple

import keras
import tensorflow as tf

from tf_bitpruning import _compat as _tfmot_compat
from tf_bitpruning import activations, costs
from tf_bitpruning.configs import BitPruneQuantizeConfig, weight_owner
from tf_bitpruning.keras3 import _compat
from tf_bitpruning.layer_kinds import activation_name
from tf_bitpruning.quantizers import ActivationBitQuantizer

_PACKAGE = "tf_bitpruning"


@keras.saving.register_keras_serializable(package=_PACKAGE)
class BitPruneWrapper(keras.layers.Wrapper):
    """Runs a Keras 3 layer with learned-bitlength quantizers (a ``BitPruneQuantizeConfig``).

    Kernels named in ``quantize_config.weight_attrs`` are quantized before the layer
    runs (the layer reads them through ``keras.StatelessScope``, so gradients reach
    the float kernel and the bitlength). The activation named in ``activation_attrs``
    is applied by the wrapper, with tfmot's placement: the quantizer runs after
    ``relu``/``linear``/``swish``/``gelu`` and before ``softmax``/``sigmoid``/``tanh``.
    With ``quantize_output`` the layer's output is quantized.

    >>> import keras
    >>> wrapped = BitPruneWrapper(keras.layers.Dense(4), BitPruneQuantizeConfig(["kernel"], ["activation"]))
    """

    bitprune_role = "wrapper"  # what :mod:`tf_bitpruning.costs` reads it as

    def __init__(self, layer: keras.layers.Layer, quantize_config: BitPruneQuantizeConfig, **kwargs):
        if isinstance(quantize_config, dict):
            quantize_config = BitPruneQuantizeConfig.from_config(quantize_config)
        kwargs.setdefault("name", f"quant_{layer.name}")
        super().__init__(layer, **kwargs)
        if _compat.lora_enabled(layer) or _compat.quantization_mode(layer):
            raise ValueError(f"Layer '{layer.name}' uses Keras 3's LoRA or its own quantization "
                             f"(layer.quantize); bit-prune the float layer instead.")
        self.quantize_config = quantize_config
        self._takes_training = "training" in inspect.signature(layer.call).parameters
        self._activation = None
        if quantize_config.activation_attrs:
            if quantize_config.activation_attrs != ["activation"]:
                raise ValueError(f"Layer '{layer.name}': under Keras 3 only the 'activation' attribute can be "
                                 f"quantized, got {quantize_config.activation_attrs}.")
            # The wrapper applies the activation around its quantizer; the layer stays linear.
            # Sigmoid and swish as TFLite computes them, as on the tf_keras path.
            self._user_activation = layer.activation  # what the layer's config keeps
            self._activation = activations.quantize_aware(
                layer.activation, not isinstance(layer, keras.layers.Activation))
            layer.activation = keras.activations.linear

    # -- build ---------------------------------------------------------------------------------------
    def build(self, input_shape):
        if not self.layer.built:
            self.layer.build(input_shape)
        config = self.quantize_config
        self._weight_vars: List[Tuple[Any, Any, Dict[str, Any], str]] = []
        for attr, quantizer in config.weight_quantizers.items():
            weight = getattr(weight_owner(self.layer, attr), attr, None)
            if weight is None:
                raise AttributeError(f"Layer '{self.layer.name}' ({type(self.layer).__name__}) has no "
                                     f"attribute '{attr}' named in its BitPruneQuantizeConfig.")
            variables = quantizer.build(tuple(weight.shape), attr, self)
            self._weight_vars.append((weight, quantizer, variables, attr))
        self._pre_activation_vars = self._post_activation_vars = self._output_quantizer_vars = None
        quantizer = config.activation_quantizer
        if self._activation is not None:
            name = activation_name(self._activation)
            if name in _tfmot_compat.TFMOT_PRE_QUANT_ACTIVATIONS or activations.pre_quantized(self._activation):
                self._pre_activation_vars = quantizer.build(None, "pre_activation", self)
            if name in _tfmot_compat.TFMOT_POST_QUANT_ACTIVATIONS:
                self._post_activation_vars = quantizer.build(None, "post_activation", self)
        if config.quantize_output:
            self._output_quantizer_vars = quantizer.build(None, "output", self)
        self.built = True

    # -- call ----------------------------------------------------------------------------------------
    def call(self, inputs, training=None, **kwargs):
        training = bool(training)
        quantizer = self.quantize_config.activation_quantizer
        mapping = [(w, q(w, training, v)) for w, q, v, _ in self._weight_vars]
        scope = keras.StatelessScope(state_mapping=mapping) if mapping else contextlib.nullcontext()
        if self._takes_training:
            kwargs["training"] = training
        with scope:
            x = self.layer(inputs, **kwargs)
        if self._activation is not None:
            if self._pre_activation_vars is not None:
                x = quantizer(x, training, self._pre_activation_vars)
            x = self._activation(x)
            if self._post_activation_vars is not None:
                x = quantizer(x, training, self._post_activation_vars)
        if self._output_quantizer_vars is not None:
            x = quantizer(x, training, self._output_quantizer_vars)
        return x

    def compute_output_shape(self, input_shape):
        return self.layer.compute_output_shape(input_shape)

    # -- what the inventory, the report and the exporter read ---------------------------------------------
    @property
    def weight_quantizers(self) -> List[Tuple[Any, Any, Dict[str, Any], str]]:
        """``(weight, quantizer, variables, attribute)`` of every quantized kernel."""
        return list(self._weight_vars)

    @property
    def activation_quantizers(self) -> List[Tuple[ActivationBitQuantizer, Dict[str, Any]]]:
        """``(quantizer, variables)`` of the activation quantizers, in tfmot's order."""
        q = self.quantize_config.activation_quantizer
        return [(q, v) for v in (self._pre_activation_vars, self._post_activation_vars,
                                 self._output_quantizer_vars) if v is not None]

    def inner_config(self) -> Dict[str, Any]:
        """The wrapped layer's config as the user built it (its real activation)."""
        config = self.layer.get_config()
        if self._activation is not None:
            config["activation"] = keras.activations.serialize(self._user_activation)
        return config

    # -- serialization -------------------------------------------------------------------------------
    def get_config(self):
        config = super().get_config()
        config["layer"] = keras.saving.serialize_keras_object(self.layer)
        config["layer"]["config"] = self.inner_config()
        config["quantize_config"] = self.quantize_config.get_config()
        return config

    @classmethod
    def from_config(cls, config, custom_objects=None):
        config = dict(config)
        layer = keras.saving.deserialize_keras_object(config.pop("layer"), custom_objects=custom_objects)
        return cls(layer, BitPruneQuantizeConfig.from_config(config.pop("quantize_config")), **config)


@keras.saving.register_keras_serializable(package=_PACKAGE)
class BitPruneInputQuantizer(keras.layers.Layer):
    """Quantizes a model input with a learned bitlength (tfmot's ``QuantizeLayer``)."""

    bitprune_role = "input"  # what :mod:`tf_bitpruning.costs` reads it as

    def __init__(self, quantizer: ActivationBitQuantizer, **kwargs):
        if isinstance(quantizer, dict):
            quantizer = ActivationBitQuantizer.from_config(quantizer)
        kwargs.setdefault("name", "quantize_layer")
        super().__init__(**kwargs)
        self.quantizer = quantizer

    def build(self, input_shape):
        self.quantizer_vars = self.quantizer.build(input_shape, self.name, self)
        self.built = True

    def call(self, inputs, training=None):
        return self.quantizer(inputs, bool(training), self.quantizer_vars)

    def compute_output_shape(self, input_shape):
        return input_shape

    @property
    def activation_quantizers(self) -> List[Tuple[ActivationBitQuantizer, Dict[str, Any]]]:
        return [(self.quantizer, self.quantizer_vars)]

    def get_config(self):
        return dict(super().get_config(), quantizer=self.quantizer.get_config())


@keras.saving.register_keras_serializable(package=_PACKAGE)
class BitPrunedModel(_compat.BuildBeforeTrace, keras.Model):
    """A functional Keras 3 model whose ``losses`` include the bit loss ``λ · R``.

    ``fit`` adds ``model.losses`` to the compiled loss, as on the tf_keras path
    (where the bit loss is a callable loss of the model). The bit loss's settings
    are part of the config and its variables (λ, the objective, the annealing
    state) are saved with the model's own variables, so ``model.save("m.keras")``
    and ``keras.saving.load_model`` round-trip it. Its optimizer and metrics are built
    before the train step is traced (:class:`~tf_bitpruning.keras3._compat.BuildBeforeTrace`):
    one trace instead of two.
    """

    @property
    def losses(self):
        losses = super().losses
        bit_loss = getattr(self, "_bitprune_loss", None)
        return losses + [bit_loss()] if bit_loss is not None else losses

    def _bit_loss_state(self) -> Dict[str, tf.Variable]:
        """The bit loss's variables by name: λ, the objective, the annealing state and
        ``BitBudget``'s control state (once a callback tracks it)."""
        loss = getattr(self, "_bitprune_loss", None)
        if loss is None:
            return {}
        state = {"regularization": loss.regularization, "objective": loss.objective,
                 "anneal_weight": loss.anneal_weight}
        state.update({f"anneal_bits_{i}": v for i, v in enumerate(loss.anneal_bits)})
        if getattr(loss, "budget_state", None) is not None:
            state["budget_state"] = loss.budget_state
        return state

    def get_config(self):
        config = super().get_config()
        loss = getattr(self, "_bitprune_loss", None)
        if loss is not None:
            config["bit_loss"] = {"regularization": float(loss.regularization.numpy()),
                                  "weighting": loss.weighting, "kind": loss.kind}
        return config

    @classmethod
    def from_config(cls, config, custom_objects=None):
        config = dict(config)
        bit_loss = config.pop("bit_loss", None)
        model = super().from_config(config, custom_objects=custom_objects)
        if bit_loss is not None:
            loss = costs.attach_bit_loss(model, bit_loss["regularization"], bit_loss["weighting"])
            loss.kind = bit_loss["kind"]
        return model

    def save_own_variables(self, store):
        super().save_own_variables(store)
        for name, v in self._bit_loss_state().items():
            store[f"bit_loss_{name}"] = v.numpy()

    def load_own_variables(self, store):
        keys = list(store.keys()) if hasattr(store, "keys") else []
        own = {k: store[k] for k in keys if not k.startswith("bit_loss_")} if keys else store
        super().load_own_variables(own)
        for name, v in self._bit_loss_state().items():
            if f"bit_loss_{name}" in keys:
                v.assign(store[f"bit_loss_{name}"])
