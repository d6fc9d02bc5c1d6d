"""The layer vocabulary: what each built-in Keras layer is to bit pruning, by class name.

A leaf module (it imports nothing from the package). The registry (:mod:`.registry`),
the layout pass (:mod:`.layout`) and the exporter (:mod:`.export.plan`,
:mod:`.export.graph`) read these tables, so that training places its quantizers
where the export expects them: the layout drops a conv's output quantizer before a
BatchNormalization because the exporter folds that pair (``FOLDABLE_PRODUCERS``).
Keyed by class name, so that one table serves tf_keras and Keras 3 layers
(:func:`builtin_kind`).
"""

from __future__ import annotations

from typing import Dict, Optional, Tuple

# -- layers with kernels ---------------------------------------------------------------------------

# class -> (kernel attributes with their output-channel axes, per-channel scale)
KERNEL_LAYERS: Dict[str, Tuple[Dict[str, Tuple[int, ...]], bool]] = {
    "Dense": ({"kernel": (-1,)}, False),
    "Conv1D": ({"kernel": (-1,)}, True),
    "Conv2D": ({"kernel": (-1,)}, True),
    "Conv2DTranspose": ({"kernel": (2,)}, True),
    "DepthwiseConv2D": ({"depthwise_kernel": (2, 3)}, True),
    "SeparableConv1D": ({"depthwise_kernel": (1, 2), "pointwise_kernel": (-1,)}, True),
    "SeparableConv2D": ({"depthwise_kernel": (2, 3), "pointwise_kernel": (-1,)}, True),
}

# Keras 3 names some kernels differently: class -> {tf_keras attribute: Keras 3 attribute}.
KERAS3_KERNEL_ATTRS: Dict[str, Dict[str, str]] = {"DepthwiseConv2D": {"depthwise_kernel": "kernel"}}

# Layers with a depthwise and a pointwise kernel, and the tensor between them.
SEPARABLE_LAYERS = frozenset({"SeparableConv1D", "SeparableConv2D"})
# Those the layout splits into a DepthwiseConv2D and a 1x1 Conv2D (layout.separable_split).
# SeparableConv1D is left whole: tfmot's 8-bit scheme runs it as a SeparableConv2D between
# reshapes, and its split would need those reshapes too; its inner tensor stays float (the
# export needs ``representative_dataset=``).
SPLIT_LAYERS = frozenset({"SeparableConv2D"})

# -- layers without kernels whose output is quantized ---------------------------------------------

RELU_LAYERS = frozenset({"ReLU", "LeakyReLU"})
MERGES = frozenset({"Add", "Subtract", "Multiply", "Average", "Maximum", "Minimum", "Concatenate"})
# Merges of any number of inputs that TFLite runs two at a time (integer ADD, MUL, MAXIMUM,
# MINIMUM): the converter chains them, and the partial results have no grid.
PAIRWISE_MERGES = frozenset({"Add", "Multiply", "Average", "Maximum", "Minimum"})
# TFLite runs them with the output scale of their input (AVERAGE_POOL_2D).
AVERAGE_POOLINGS = frozenset({"AveragePooling1D", "AveragePooling2D"})
# Averages over all positions: their output is at least the smallest of their inputs' values.
GLOBAL_AVERAGES = frozenset({"GlobalAveragePooling1D", "GlobalAveragePooling2D", "GlobalAveragePooling3D"})
UPSAMPLINGS = frozenset({"UpSampling1D", "UpSampling2D"})

# Layers whose output the registry quantizes.
OUTPUT_LAYERS = (RELU_LAYERS | MERGES | AVERAGE_POOLINGS | UPSAMPLINGS
                 | {"BatchNormalization", "GlobalAveragePooling1D", "GlobalAveragePooling2D"})

# Run in float when they follow a model input (the input quantizer moves after them; the
# exporter computes them in float on the input, then QUANTIZE).
# (RandomCrop, a center crop and resize at inference, is not supported yet: tfmot's annotation
# of it fails on its shape.)
PREPROCESSING_LAYERS = frozenset({"Rescaling", "Normalization"})

# -- layers that only act while training (identity at inference) -----------------------------------
# Passed through (no wrapper, absent from the .tflite); right after a model input they join
# the preprocessing chain (layout.preprocessing_chain), so the input quantizer follows them and
# the first layer trains on the learned input grid.
AUGMENTATIONS = frozenset({"RandomFlip", "RandomRotation", "RandomZoom", "RandomTranslation",
                           "RandomContrast", "RandomBrightness"})
TRAINING_ONLY = AUGMENTATIONS | {
    "GaussianNoise", "GaussianDropout", "AlphaDropout", "SpatialDropout1D", "SpatialDropout2D",
    "SpatialDropout3D", "ActivityRegularization"}
# What may follow a model input in its float preprocessing chain.
INPUT_CHAIN_LAYERS = PREPROCESSING_LAYERS | TRAINING_ONLY

# -- layers that are not quantized -----------------------------------------------------------------

# Layers whose output values are some of their input values at inference (so stay on its grid).
VALUE_PRESERVING = frozenset({
    "InputLayer", "Flatten", "Reshape", "Permute", "Dropout", "MaxPooling1D", "MaxPooling2D",
    "GlobalMaxPooling1D", "GlobalMaxPooling2D", "ZeroPadding1D", "ZeroPadding2D",
    "Cropping1D", "Cropping2D",
}) | TRAINING_ONLY
# Layers that get no quantizer, not even a wrapper. (The exporter follows a grid through the
# value-preserving ones only.)
PASS_THROUGH_LAYERS = VALUE_PRESERVING | {"Softmax", "Identity"}

# -- TF functions on Keras tensors (tf_keras' TFOpLambda layers) ------------------------------------

# (KerasOpLambda: a raw keras.ops call in a Keras 3 model, as a layer; tf_bitpruning/keras3/ops.py.)
OP_LAMBDAS = ("TFOpLambda", "SlicingOpLambda", "ElementwiseOpLambda", "KerasOpLambda")
# Their function (the config's "function"): elementwise math, whose output is quantized ...
TF_OP_OUTPUT = frozenset({
    "__operators__.add", "math.add", "math.add_n", "math.subtract", "math.multiply",
    "math.truediv", "math.divide", "math.negative", "math.maximum", "math.minimum",
    "clip_by_value", "nn.relu", "nn.relu6", "nn.leaky_relu", "nn.silu", "nn.swish",
    "math.sigmoid", "nn.sigmoid", "math.tanh", "nn.tanh", "nn.gelu", "concat",
    "math.reduce_mean", "nn.avg_pool2d",
})
# ... and ops that only move values.
TF_OP_PASS_THROUGH = frozenset({
    "__operators__.getitem", "reshape", "identity", "expand_dims", "squeeze",
    "compat.v1.squeeze", "transpose", "compat.v1.transpose", "nn.max_pool2d",
    "math.reduce_max", "image.resize", "nn.depth_to_space", "nn.space_to_depth",
})

# -- activations -----------------------------------------------------------------------------------

# Activations tfmot's quantize-aware activation does not know, supported in an ``Activation``
# layer by quantizing the layer's output.
OUTPUT_ACTIVATIONS = frozenset({
    "relu6", "hard_sigmoid", "hard_swish", "elu", "selu", "softplus", "softsign", "mish",
    "exponential", "silu", "leaky_relu",
})

# -- outputs re-quantized by their consumer --------------------------------------------------------
# A producer whose only consumer re-quantizes its values right away, in a way the exported
# file reproduces, skips its own output quantizer (layout.output_requantized): the
# consumer's quantizer is the one TFLite keeps (a fused activation, a common concatenation scale).

REQUANTIZING_CONSUMERS = frozenset({"ReLU", "LeakyReLU", "Concatenate"})
# ... except after these producers, into which TFLite fuses no activation (CONCATENATION):
# their output needs a grid of its own;
UNFUSED_PRODUCERS = frozenset({"Concatenate"})
# ... a BatchNormalization after these (linear) producers, which the exporter folds into
# the producer's kernel;
FOLDABLE_PRODUCERS = frozenset({"Conv1D", "Conv2D", "DepthwiseConv2D", "Dense"})
# ... an Activation that TFLite fuses into the producer, or that tfmot quantizes before.
FUSED_ACTIVATIONS = frozenset({"linear", "relu", "relu6", "softmax", "sigmoid", "tanh", "gelu"})


# -- reading a layer -------------------------------------------------------------------------------

def builtin_kind(layer, exact: bool = True) -> Optional[str]:
    """The class name of a built-in Keras layer (tf_keras or Keras 3), e.g. ``"Conv2D"``; None
    for other classes. ``exact=False``: the nearest built-in base class (``isinstance``)."""
    for cls in type(layer).__mro__[:1] if exact else type(layer).__mro__:
        if cls.__module__.split(".")[0] in ("tf_keras", "keras"):
            return cls.__name__
    return None


def activation_name(activation) -> str:
    """The name of an activation function as tfmot and these tables know it (``"relu"``)."""
    name = getattr(activation, "__name__", type(activation).__name__)
    if getattr(activation, "__module__", "").startswith("keras."):
        # Keras 3's names of swish and hard swish; tfmot and this registry know them as these.
        return {"silu": "swish", "hard_silu": "hard_swish"}.get(name, name)
    return name


def op_lambda_function(layer) -> Optional[str]:
    """The TF function of a ``TFOpLambda``/``SlicingOpLambda`` (``"math.multiply"``), else None."""
    if type(layer).__name__ not in OP_LAMBDAS:
        return None
    return layer.get_config().get("function")
