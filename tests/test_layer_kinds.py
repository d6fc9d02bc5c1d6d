"""The layer vocabulary's tables agree with each other and name real Keras layers."""

import keras
import tf_keras

from tf_bitpruning import layer_kinds as K
from tf_bitpruning.export import plan

LAYER_TABLES = {name: getattr(K, name) for name in (
    "KERNEL_LAYERS", "SEPARABLE_LAYERS", "SPLIT_LAYERS", "RELU_LAYERS", "MERGES", "PAIRWISE_MERGES",
    "AVERAGE_POOLINGS", "GLOBAL_AVERAGES", "UPSAMPLINGS", "OUTPUT_LAYERS", "PREPROCESSING_LAYERS",
    "VALUE_PRESERVING", "PASS_THROUGH_LAYERS", "REQUANTIZING_CONSUMERS", "UNFUSED_PRODUCERS",
    "FOLDABLE_PRODUCERS", "TABLE_LAYERS", "CALIBRATED_LAYERS", "RECURRENT_LAYERS")}


def test_every_kind_is_a_tf_keras_layer():
    from tf_bitpruning import attention_layers, op_lambdas

    CUSTOM_OBJECTS = {**attention_layers.CUSTOM_OBJECTS, **op_lambdas.CUSTOM_OBJECTS}
    for table, kinds in LAYER_TABLES.items():
        missing = [kind for kind in kinds if not isinstance(getattr(tf_keras.layers, kind, None), type)
                   and kind not in K.OWN_LAYERS]
        assert not missing, f"{table}: {missing}"
    # Our own kinds (an expanded attention's pieces, RandomCrop) are tf_keras layers of the package.
    assert all(issubclass(CUSTOM_OBJECTS[kind], tf_keras.layers.Layer) for kind in K.OWN_LAYERS)


def test_tables_nest():
    assert K.SPLIT_LAYERS <= K.SEPARABLE_LAYERS <= set(K.KERNEL_LAYERS)
    assert K.FOLDABLE_PRODUCERS <= set(K.KERNEL_LAYERS) - K.SEPARABLE_LAYERS
    assert K.PAIRWISE_MERGES <= K.MERGES <= K.OUTPUT_LAYERS
    assert K.VALUE_PRESERVING <= K.PASS_THROUGH_LAYERS
    assert K.REQUANTIZING_CONSUMERS <= K.OUTPUT_LAYERS and K.UNFUSED_PRODUCERS <= K.MERGES
    quantized = set(K.KERNEL_LAYERS) | K.OUTPUT_LAYERS | K.PREPROCESSING_LAYERS
    assert not quantized & K.PASS_THROUGH_LAYERS
    assert K.TABLE_LAYERS <= set(K.KERNEL_LAYERS) and K.CALIBRATED_LAYERS <= K.OUTPUT_LAYERS
    assert K.ACTIVATION_PRODUCTS <= K.OUTPUT_LAYERS and set(K.FIXED_GRID_LAYERS) <= K.PASS_THROUGH_LAYERS
    assert K.ACTIVATION_PRODUCTS | set(K.FIXED_GRID_LAYERS) <= K.OWN_LAYERS
    # Layers refused with what to do are not also configured.
    assert not set(K.FLOAT_ONLY_LAYERS) & (quantized | K.PASS_THROUGH_LAYERS)
    assert all(isinstance(getattr(tf_keras.layers, kind, None), type) for kind in K.FLOAT_ONLY_LAYERS)


def test_integer_dtype():
    assert K.integer_dtype("int32") and K.integer_dtype(tf_keras.Input((3,), dtype="int64").dtype)
    assert not K.integer_dtype("float32") and not K.integer_dtype(None)


def test_the_exporter_reads_the_same_tables():
    assert {cls.__name__ for cls in plan.VALUE_PRESERVING} == K.VALUE_PRESERVING
    assert {cls.__name__ for cls in plan.FOLDABLE} == K.FOLDABLE_PRODUCERS


def test_builtin_kind():
    assert K.builtin_kind(tf_keras.layers.Conv2D(2, 1)) == "Conv2D"
    assert K.builtin_kind(keras.layers.Conv2D(2, 1)) == "Conv2D"

    class Mine(tf_keras.layers.Conv2D):
        pass

    assert K.builtin_kind(Mine(2, 1)) is None and K.builtin_kind(Mine(2, 1), exact=False) == "Conv2D"


def test_activation_name():
    assert K.activation_name(tf_keras.activations.relu) == "relu"
    assert K.activation_name(keras.activations.silu) == "swish"  # Keras 3's name; tfmot's is swish
