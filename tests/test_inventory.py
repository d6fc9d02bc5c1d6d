"""Every learned bitlength of a bit-pruned model is a tensor the budget counts.

``bitlengths``, ``BitBudget``, ``freeze_bitlengths``, the report and the ``.tflite``
metadata all read one inventory (``costs.quantized_tensors``). A quantizer outside it
would still be trained and exported, but at a bitlength no budget ever lowers: the
deployed model would not be at its stated budget. A swish or gelu inside a layer has
two activation quantizers (before the activation and after it), which is where such a
tensor hid (the one before was trained, exported, and left out of the budget).
"""

import keras as keras3
import numpy as np
import pytest
import tf_keras

import tf_bitpruning as tfbp
from tf_bitpruning import costs

KERASES = {"tf_keras": tf_keras, "keras3": keras3}
# tfmot's clone makes the tf_keras training test the slower one; it runs in the slow tier.
BOTH = [pytest.param("tf_keras", marks=pytest.mark.slow), "keras3"]


def _zoo(K):
    """A layer with each activation kind inside it (and one in its own layer)."""
    inputs = K.Input((6, 6, 2))
    x = K.layers.Conv2D(4, 3, activation="swish", name="conv_swish")(inputs)
    x = K.layers.Conv2D(4, 1, activation="sigmoid", name="conv_sigmoid")(x)
    x = K.layers.Flatten()(x)
    x = K.layers.Dense(8, activation="gelu", name="dense_gelu")(x)
    x = K.layers.Dense(8, activation="tanh", name="dense_tanh")(x)
    x = K.layers.Activation("swish", name="swish")(K.layers.Dense(8, name="dense")(x))
    return K.Model(inputs, K.layers.Dense(3, activation="softmax", name="head")(x))


def _bits_variables(model):
    return [v for v in model.trainable_variables if v.name.split("/")[-1].split(":")[0].endswith("bits")]


@pytest.mark.parametrize("kname", ["tf_keras", "keras3"])
def test_every_learned_bitlength_is_in_the_budget(kname):
    K = KERASES[kname]
    bp = tfbp.bitprune_model(_zoo(K), regularization=1.0)
    tensors = costs.quantized_tensors(bp)
    listed = {id(t.bits_variable) for t in tensors}
    unlisted = [v.name for v in _bits_variables(bp) if id(v) not in listed]
    assert _bits_variables(bp) and not unlisted, unlisted
    names = list(tfbp.bitlengths(bp))
    assert len(names) == len(set(names)) == len(tensors)
    # The swish and gelu inside a layer: quantized before the activation and after it.
    for layer in ("conv_swish", "dense_gelu"):
        assert f"{layer}/pre_activation" in names and f"{layer}/activations" in names, names
    # A sigmoid, tanh or softmax inside a layer is quantized before it only (its output
    # lies in a fixed range): one tensor, its activations.
    for layer in ("conv_sigmoid", "dense_tanh", "head"):
        assert [n for n in names if n.startswith(layer + "/")] == [f"{layer}/weights", f"{layer}/activations"]


@pytest.mark.parametrize("kname", BOTH)
def test_the_budget_lowers_a_pre_activation(kname):
    """The bit loss reaches the tensor before an activation inside a layer: with a zero
    task loss (the bit loss alone), every listed bitlength falls, and freezing to a
    budget meets it with the pre-activation counted."""
    K = KERASES[kname]
    bp = tfbp.bitprune_model(_zoo(K), regularization=1.0)
    x = np.random.default_rng(0).normal(size=(16, 6, 6, 2)).astype(np.float32)
    bp.compile(K.optimizers.SGD(0.5), loss=lambda y, p: 0.0 * K.ops.sum(p) if kname == "keras3"
               else 0.0 * tf_keras.backend.sum(p))
    before = tfbp.bitlengths(bp)
    bp.fit(x, np.zeros((16, 3), np.float32), epochs=1, batch_size=16, verbose=0)
    after = tfbp.bitlengths(bp)
    assert all(after[n] < before[n] for n in before), {n: (before[n], after[n]) for n in before}
    frozen = tfbp.freeze_bitlengths(bp, target_bits=3.0)
    bits = tfbp.bitlengths(frozen)
    assert bits["dense_gelu/pre_activation"] == int(bits["dense_gelu/pre_activation"])
    assert tfbp.average_bits(frozen) <= 3.0
