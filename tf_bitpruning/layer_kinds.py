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
    "Embedding": ({"embeddings": (-1,)}, False),
    # One scale per kernel: its output axes depend on the equation.
    "EinsumDense": ({"kernel": (-1,)}, False),
    # The cell's input and recurrent kernels (configs.weight_owner).
    "LSTM": ({"kernel": (-1,), "recurrent_kernel": (-1,)}, False),
    "GRU": ({"kernel": (-1,), "recurrent_kernel": (-1,)}, False),
}

# Kernels read by lookup, not multiplied: one scale and one bitlength per table (TFLite's
# GATHER keeps its table's one scale, and its output is on the table's grid, so no output
# quantizer), no multiply-accumulates, no activation.
TABLE_LAYERS = frozenset({"Embedding"})

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

# Layers with inner tensors no learned quantizer covers (LayerNormalization's mean, variance
# and 1/sqrt): the export calibrates them at 8 bits (``representative_dataset=``, required),
# and the metadata lists them; the layer's output is on its learned grid.
CALIBRATED_LAYERS = frozenset({"LayerNormalization", "LSTM", "GRU"})
# What of them is calibrated (the metadata's and the report's words).
CALIBRATED_TENSORS = {"LayerNormalization": "statistics", "LSTM": "gates and states", "GRU": "gates and states"}

# -- the pieces of an expanded MultiHeadAttention (tf_bitpruning/attention.py) ---------------------
# Our own layers (tf_bitpruning/attention_layers.py and its Keras 3 twin; op_lambdas.RandomCrop), known by class name.
OWN_LAYERS = frozenset({"AttentionEinsum", "AttentionSoftmax", "RandomCrop"})
# Products of two activations (an int8 BATCH_MATMUL): both inputs are on learned grids, the
# output gets its own.
ACTIVATION_PRODUCTS = frozenset({"AttentionEinsum"})
# Layers whose output lies on a grid fixed by TFLite (no learned quantizer, no calibration):
# what of them, in the metadata's and the report's words.
FIXED_GRID_LAYERS = {"AttentionSoftmax": "output on TFLite's int8 softmax grid (step 1/256)"}

# Layers whose output the registry quantizes.
OUTPUT_LAYERS = (RELU_LAYERS | MERGES | AVERAGE_POOLINGS | UPSAMPLINGS | CALIBRATED_LAYERS | ACTIVATION_PRODUCTS
                 | {"BatchNormalization", "GlobalAveragePooling1D", "GlobalAveragePooling2D"})

# Run in float when they follow a model input (the input quantizer moves after them; the
# exporter computes them in float on the input, then QUANTIZE).
# RandomCrop is one too: not the identity at inference under tf_keras (a center crop and resize,
# ``smart_resize``); Keras 3 (3.15) returns its input unchanged. Under tf_keras it runs as
# op_lambdas.RandomCrop (tfmot passes ``training`` as None or an int, which its call refuses).
PREPROCESSING_LAYERS = frozenset({"Rescaling", "Normalization", "RandomCrop"})

# -- layers that only act while training (identity at inference) -----------------------------------
# Passed through (no wrapper, absent from the .tflite); right after a model input they join
# the preprocessing chain (layout.preprocessing_chain), so the input quantizer follows them and
# the first layer trains on the learned input grid.
AUGMENTATIONS = frozenset({"RandomFlip", "RandomRotation", "RandomZoom", "RandomTranslation",
                           "RandomContrast", "RandomBrightness"})
TRAINING_ONLY = AUGMENTATIONS | {
    "GaussianNoise", "GaussianDropout", "AlphaDropout", "SpatialDropout1D", "SpatialDropout2D",
    "SpatialDropout3D", "ActivityRegularization"}
# Left unwrapped on the tf_keras path: tfmot's wrapper calls the inner layer's ``call``, which
# skips the activity loss its ``__call__`` adds (and keeps a stale symbolic loss that breaks
# ``fit``). Not part of an input chain (the input quantizer goes before it).
UNWRAPPED = frozenset({"ActivityRegularization"})
# What may follow a model input in its float preprocessing chain.
INPUT_CHAIN_LAYERS = PREPROCESSING_LAYERS | (TRAINING_ONLY - UNWRAPPED)

# -- layers that are not quantized -----------------------------------------------------------------

# Layers whose output values are some of their input values at inference (so stay on its grid).
VALUE_PRESERVING = frozenset({
    "InputLayer", "Flatten", "Reshape", "Permute", "Dropout", "MaxPooling1D", "MaxPooling2D",
    "GlobalMaxPooling1D", "GlobalMaxPooling2D", "ZeroPadding1D", "ZeroPadding2D",
    "Cropping1D", "Cropping2D",
}) | TRAINING_ONLY
# Layers that get no quantizer, not even a wrapper. (The exporter follows a grid through the
# value-preserving ones only.)
PASS_THROUGH_LAYERS = VALUE_PRESERVING | {"Softmax", "Identity"} | set(FIXED_GRID_LAYERS)

# -- layers that are not bit-pruned by themselves, and what to do instead ---------------------------
# Their kernels are sublayers (the wrapper quantizes the layer's own attributes, or its cell's).
# bitprune_model and bitprune_annotate_model expand an attention into layers it learns
# (tf_bitpruning/attention.py); by itself (bitprune_annotate_layer) it cannot be wrapped.
FLOAT_ONLY_LAYERS: Dict[str, str] = {
    "MultiHeadAttention": (
        "its query/key/value/output kernels are sublayers, which the bit-pruning wrapper cannot "
        "quantize. Give the whole model to tfbp.bitprune_model (or bitprune_annotate_model), which "
        "expands the attention into bit-pruned layers; or leave it in float (skip_layers=[its name]) "
        "and export with representative_dataset=..."),
}
# Recurrent layers: the export needs them unrolled (a loop is not full-integer in TFLite).
RECURRENT_LAYERS = frozenset({"LSTM", "GRU", "SimpleRNN", "RNN"})

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
# (Not gelu: TFLite runs it as an op of its own, whose int8 input needs the producer's grid.)
FUSED_ACTIVATIONS = frozenset({"linear", "relu", "relu6", "softmax", "sigmoid", "tanh"})


# -- the model's outputs ---------------------------------------------------------------------------
# Layers that only turn a model's output into probabilities: with ``quantize_outputs=False`` the
# layer they read (the logits) stays float too (layout.float_output_layers).
OUTPUT_TAILS = frozenset({"Softmax", "Activation"})


# -- reading a layer -------------------------------------------------------------------------------

def builtin_kind(layer, exact: bool = True) -> Optional[str]:
    """The class name of a built-in Keras layer (tf_keras or Keras 3), e.g. ``"Conv2D"``, or of
    one of ours (``OWN_LAYERS``); None for other classes. ``exact=False``: the nearest built-in base class (``isinstance``)."""
    for cls in type(layer).__mro__[:1] if exact else type(layer).__mro__:
        package = cls.__module__.split(".")[0]
        if package in ("tf_keras", "keras") or (package == "tf_bitpruning" and cls.__name__ in OWN_LAYERS):
            return cls.__name__
    return None


def activation_name(activation) -> str:
    """The name of an activation function as tfmot and these tables know it (``"relu"``)."""
    name = getattr(activation, "__name__", type(activation).__name__)
    if getattr(activation, "__module__", "").startswith("keras."):
        # Keras 3's names of swish and hard swish; tfmot and this registry know them as these.
        return {"silu": "swish", "hard_silu": "hard_swish"}.get(name, name)
    return name


def integer_dtype(dtype) -> bool:
    """Whether a model input of this dtype (``"int32"``, a ``tf.DType``) holds indices or
    codes, not values: it gets no input quantizer (an ``Embedding`` reads it)."""
    name = getattr(dtype, "name", dtype)
    return isinstance(name, str) and name.startswith(("int", "uint", "bool"))


def op_lambda_function(layer) -> Optional[str]:
    """The TF function of a ``TFOpLambda``/``SlicingOpLambda`` (``"math.multiply"``), else None."""
    if type(layer).__name__ not in OP_LAMBDAS:
        return None
    return layer.get_config().get("function")
