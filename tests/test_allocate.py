"""``allocate_bitlengths``: a trained network starts at the budget, with integer
bitlengths chosen by the change of its outputs on calibration data."""

import keras as keras3
import numpy as np
import pytest
import tf_keras

import tf_bitpruning as tfbp
from tf_bitpruning import costs
from tf_bitpruning.freeze import uncalibrated_layers
from tf_bitpruning.rounding import learned_bits, round_all
from tests.support.models import bn_add_cnn
from tests.test_keras3 import cnn


def _outputs(model, x):
    return model(x, training=False).numpy()


@pytest.mark.parametrize("keras", [tf_keras, keras3], ids=["tf_keras", "keras3"])
def test_meets_the_budget_with_integers_that_stay_trainable(keras):
    model = bn_add_cnn() if keras is tf_keras else cnn(keras)
    bp = tfbp.bitprune_model(model)
    x = np.random.default_rng(0).uniform(0, 1, (96, 8, 8, 1)).astype(np.float32)
    assert uncalibrated_layers(bp)  # no training batch yet
    chosen = tfbp.allocate_bitlengths(bp, 4.0, x)
    assert not uncalibrated_layers(bp)  # calibrated on x first
    bits = tfbp.bitlengths(bp)
    assert chosen == {name: round(b) for name, b in bits.items()}
    assert all(abs(b - round(b)) < 1e-4 for b in bits.values())
    tensors = costs.quantized_tensors(bp)
    avg = tfbp.average_bits(bp)
    assert 4.0 - 1.0 / len(tensors) - 1e-4 <= avg <= 4.0 + 1e-4  # as close under as one step allows
    assert len(set(chosen.values())) > 1  # not uniform: tensors traded bits
    assert all(t.bits_variable.trainable for t in tensors)


def test_spends_bits_where_the_outputs_change_most(digits):
    """On a network trained a little, the allocation changes the outputs less than
    every tensor at the budget's bits does (the greedy's purpose)."""
    x_train, y_train, _, _ = digits
    model = bn_add_cnn()
    model.compile("adam", tf_keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    model.fit(x_train, y_train, epochs=2, batch_size=64, verbose=0)
    x = x_train[:256]
    reference = _outputs(model, x)

    def change(bp):
        return float(np.mean(np.sum(np.square(_outputs(bp, x) - reference), axis=1)))

    bp = tfbp.bitprune_model(model)
    tfbp.allocate_bitlengths(bp, 3.0, x)
    allocated = change(bp)
    for t in costs.quantized_tensors(bp):
        t.bits_variable.assign(np.full(t.bits_variable.shape, 3.0 / t.quantizer.bits_lr_multiplier, np.float32))
    assert allocated < change(bp)  # every tensor at 3 bits: the same average


def test_errors_name_the_problem():
    bp = tfbp.bitprune_model(bn_add_cnn())
    x = np.zeros((8, 8, 8, 1), np.float32)
    with pytest.raises(ValueError, match="target_bits"):
        tfbp.allocate_bitlengths(bp, 0.5, x)
    with pytest.raises(ValueError, match="cannot be met"):
        tfbp.allocate_bitlengths(bp, 1.0, x)  # kernels go no lower than 2 bits
    with pytest.raises(ValueError, match="empty"):
        tfbp.allocate_bitlengths(bp, 4.0, x[:0])


@pytest.mark.parametrize("keras", [tf_keras, keras3], ids=["tf_keras", "keras3"])
def test_runs_no_pass_for_a_tensor_at_its_start(keras, monkeypatch):
    """The change is measured against the model at its starting bitlengths, so a
    tensor at its start costs nothing and needs no forward pass."""
    from tf_bitpruning import allocate

    seen = []
    real = allocate.output_change_cost

    def recording(*args):
        cost = real(*args)
        return lambda t, b: seen.append((t, np.array(b))) or cost(t, b)

    monkeypatch.setattr(allocate, "output_change_cost", recording)
    bp = tfbp.bitprune_model(bn_add_cnn() if keras is tf_keras else cnn(keras))
    x = np.random.default_rng(0).uniform(0, 1, (64, 8, 8, 1)).astype(np.float32)
    start = {t.name: b for t, b in round_all(learned_bits(costs.quantized_tensors(bp)), "ceil").items()}
    tfbp.allocate_bitlengths(bp, 4.0, x)
    assert seen  # lower bitlengths were measured
    assert not [t.name for t, b in seen if np.array_equal(b, start[t.name])]
