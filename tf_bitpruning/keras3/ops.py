"""Raw ``keras.ops`` calls in a Keras 3 model (``x + 3.0``, ``keras.ops.relu6(x)``) as layers.

Keras 3 records a ``keras.ops`` function called on a symbolic tensor as a bare operation
in the functional graph, where tf_keras records a ``TFOpLambda`` layer (Keras 3's
``MobileNetV3`` writes its hard sigmoid as ``ReLU(6)(x + 3) * (1 / 6)``). ``bitprune_model``
turns each into a :class:`KerasOpLambda`: a layer that calls the same operation with the
same constants, whose ``function`` is the TensorFlow function a ``TFOpLambda`` of the same
math names (``"math.add"``). The registry and the layout then treat it exactly as the
tf_keras path treats that ``TFOpLambda`` (``layer_kinds.TF_OP_OUTPUT``: its output is
quantized; ``TF_OP_PASS_THROUGH``: no quantizer), and the export twin
(:mod:`tf_bitpruning.keras3.bridge`) rebuilds it as that ``TFOpLambda``.

Supported: one tensor operand, any other operands Python or NumPy scalars, the ops of
:data:`KERAS_OPS`. Others are refused by name with what to use instead.
"""

from __future__ import annotations

from typing import Any, Dict, NamedTuple, Sequence, Tuple

import keras
import numpy as np

_PACKAGE = "tf_bitpruning"


class OpSpec(NamedTuple):
    """A Keras 3 op as a TensorFlow function: its name as a ``TFOpLambda`` records it, the
    TF keywords of the op's further positional operands, and of the op's own config."""
    function: str
    operands: Tuple[str, ...] = ()
    config: Dict[str, str] = {}
    commutative: bool = False


# Keras 3 operation class -> its TensorFlow function (layer_kinds.TF_OP_OUTPUT / TF_OP_PASS_THROUGH).
KERAS_OPS: Dict[str, OpSpec] = {
    "Add": OpSpec("math.add", ("y",), commutative=True),
    "Multiply": OpSpec("math.multiply", ("y",), commutative=True),
    "Maximum": OpSpec("math.maximum", ("y",), commutative=True),
    "Minimum": OpSpec("math.minimum", ("y",), commutative=True),
    "Subtract": OpSpec("math.subtract", ("y",)),
    "TrueDivide": OpSpec("math.truediv", ("y",)),
    "Divide": OpSpec("math.truediv", ("y",)),
    "Negative": OpSpec("math.negative"),
    "Relu": OpSpec("nn.relu"),
    "Relu6": OpSpec("nn.relu6"),
    "Sigmoid": OpSpec("math.sigmoid"),
    "Tanh": OpSpec("math.tanh"),
    "Silu": OpSpec("nn.silu"),
    "Gelu": OpSpec("nn.gelu", config={"approximate": "approximate"}),
    "Clip": OpSpec("clip_by_value", config={"x_min": "clip_value_min", "x_max": "clip_value_max"}),
    "Mean": OpSpec("math.reduce_mean", config={"axis": "axis", "keepdims": "keepdims"}),
    "Reshape": OpSpec("reshape", config={"newshape": "shape"}),
    "Transpose": OpSpec("transpose", config={"axes": "perm"}),
    "ExpandDims": OpSpec("expand_dims", config={"axis": "axis"}),
    "Squeeze": OpSpec("squeeze", config={"axis": "axis"}),
}


def is_raw_op(op) -> bool:
    """Whether ``op`` is a bare operation of a functional graph (not a layer)."""
    return not isinstance(op, keras.layers.Layer)


def unsupported_op(op) -> str:
    """Why a raw op cannot be bit-pruned, or "" when :class:`KerasOpLambda` takes it."""
    if type(op).__name__ in KERAS_OPS:
        return ""
    return (f"calls the op '{op.name}' ({type(op).__name__}) on a symbolic tensor, which has no "
            f"TFOpLambda counterpart here (supported keras.ops: {', '.join(sorted(KERAS_OPS))}). "
            f"Use a layer instead (keras.layers.Add, Multiply, Activation, ...)")


def _scalar(value, op) -> Any:
    if isinstance(value, (bool, int, float)) and not isinstance(value, np.ndarray):
        return value
    if isinstance(value, np.generic) and np.ndim(value) == 0:
        return value.item()
    raise ValueError(f"bitprune_model: the op '{op.name}' ({type(op).__name__}) takes the operand "
                     f"{value!r} ({type(value).__name__}); only one tensor and scalar constants are "
                     f"supported in a raw keras.ops call. Use a layer (keras.layers.Add, Multiply, ...) "
                     f"for tensor-tensor math.")


def lift(op, args: Sequence[Any], kwargs: Dict[str, Any], name: str) -> Tuple["KerasOpLambda", Any]:
    """The :class:`KerasOpLambda` of a raw op's call ``op(*args, **kwargs)`` and its one
    tensor operand (a tensor of the graph being rebuilt)."""
    spec = KERAS_OPS[type(op).__name__]
    tensors = [i for i, a in enumerate(args) if hasattr(a, "shape") and hasattr(a, "dtype")
               and not isinstance(a, (np.ndarray, np.generic))]
    if kwargs or len(tensors) != 1 or len(args) > 1 + len(spec.operands):
        raise ValueError(f"bitprune_model: the op '{op.name}' ({type(op).__name__}) is called on "
                         f"{len(tensors)} tensors with {len(args)} operands{' and keywords' if kwargs else ''}; "
                         f"a raw keras.ops call must take one tensor and scalar constants. Use a layer "
                         f"(keras.layers.Add, Multiply, ...) for tensor-tensor math.")
    index = tensors[0]
    if index and not spec.commutative:
        raise ValueError(f"bitprune_model: the op '{op.name}' ({type(op).__name__}) has its tensor as "
                         f"operand {index + 1}; write the constant second (e.g. -(x - c) for c - x).")
    constants = [_scalar(a, op) for i, a in enumerate(args) if i != index]
    layer = KerasOpLambda(keras.saving.serialize_keras_object(op), constants, name=name)
    return layer, args[index]


@keras.saving.register_keras_serializable(package=_PACKAGE)
class KerasOpLambda(keras.layers.Layer):
    """A raw ``keras.ops`` call on one tensor (``x + 3.0``) as a layer: Keras 3's
    counterpart of tf_keras' ``TFOpLambda`` (see module doc). ``bitprune_model`` makes
    them: ``operation`` is the serialized op, ``constants`` its operands after the tensor.

    >>> import keras
    >>> x = keras.Input((4,))
    >>> add = keras.Model(x, x + 3.0).operations[-1]   # the raw op Keras 3 recorded
    >>> layer = KerasOpLambda(keras.saving.serialize_keras_object(add), [3.0])
    >>> layer.function, layer.tf_call()
    ('math.add', ('math.add', {'y': 3.0}))
    """

    def __init__(self, operation: Dict[str, Any], constants: Sequence[Any] = (), **kwargs):
        super().__init__(**kwargs)
        self.operation_config = operation
        self.op = keras.saving.deserialize_keras_object(operation)
        self.constants = list(constants)
        spec = KERAS_OPS.get(type(self.op).__name__)
        if spec is None:
            raise ValueError(f"KerasOpLambda '{self.name}': {unsupported_op(self.op)}.")
        self.spec = spec
        self.function = spec.function  # what layer_kinds.op_lambda_function reads

    def call(self, inputs):
        return self.op(inputs, *self.constants)

    def compute_output_spec(self, inputs):
        return self.op.compute_output_spec(inputs, *self.constants)

    def compute_output_shape(self, input_shape):
        return self.compute_output_spec(keras.KerasTensor(input_shape, dtype=self.compute_dtype)).shape

    def tf_call(self) -> Tuple[str, Dict[str, Any]]:
        """``(TF function name, keywords)``: the same math as a ``TFOpLambda`` call on the tensor."""
        config = self.op.get_config()
        keywords = dict(zip(self.spec.operands, self.constants))
        keywords.update({tf_name: config[name] for name, tf_name in self.spec.config.items()})
        return self.spec.function, keywords

    def get_config(self):
        return dict(super().get_config(), operation=self.operation_config, constants=self.constants,
                    function=self.function)

    @classmethod
    def from_config(cls, config):
        config = dict(config)
        config.pop("function", None)
        return cls(**config)
