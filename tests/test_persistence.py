"""Saving and loading bit-pruned models: SavedModel, h5, tf.train.Checkpoint, and
the Keras v3 format's failure (digits; frozen models shared per session)."""

import numpy as np
import pytest
import tensorflow as tf
import tf_keras as keras

import tf_bitpruning as tfbp
from tf_bitpruning import costs
from tf_bitpruning.export import load_model, restore_bit_loss, save_model

from tests.support.models import bn_add_cnn, small_cnn

pytestmark = pytest.mark.slow  # every test trains or saves a trained model


def learning_model(digits, fn=bn_add_cnn, regularization=0.05, steps=4):
    """A bit-pruned model a few steps into the learning phase (ranges calibrated)."""
    keras.utils.set_random_seed(0)
    bp = tfbp.bitprune_model(fn(), regularization, "memory", bits_lr_multiplier=20.0)
    compile_(bp, logits=fn is bn_add_cnn)
    bp.fit(digits[0][:64 * steps], digits[1][:64 * steps], epochs=1, batch_size=64, shuffle=False, verbose=0)
    return bp


def compile_(model, logits=True):
    model.compile(keras.optimizers.Adam(3e-3),
                  keras.losses.SparseCategoricalCrossentropy(from_logits=logits))


def assert_same_model(a, b, x):
    """Weights (bitlengths and ranges included), bitlengths and predictions all equal."""
    assert [w.name.split("/")[-1] for w in a.weights] == [w.name.split("/")[-1] for w in b.weights]
    for wa, wb in zip(a.weights, b.weights):
        np.testing.assert_array_equal(wa.numpy(), wb.numpy(), err_msg=wa.name)
    assert tfbp.bitlengths(a) == tfbp.bitlengths(b)
    assert [t.quantizer.get_config() for t in costs.quantized_tensors(a)] == \
        [t.quantizer.get_config() for t in costs.quantized_tensors(b)]
    np.testing.assert_array_equal(a.predict(x, verbose=0), b.predict(x, verbose=0))


@pytest.mark.parametrize("fmt", ["savedmodel", "h5"])
def test_frozen_round_trip(fmt, frozen_models, digits, tmp_path):
    model = frozen_models["functional"]
    path = tmp_path / ("model" if fmt == "savedmodel" else "model.h5")
    model.save(path)
    with tfbp.bitprune_scope():
        loaded = keras.models.load_model(path)
    assert_same_model(model, loaded, digits[2])
    assert all(t.quantizer.frozen for t in costs.quantized_tensors(loaded))


def test_learning_phase_round_trip_and_bit_loss(digits, tmp_path):
    bp = learning_model(digits, fn=small_cnn)
    costs.get_bit_loss(bp).regularization.assign(0.0123)
    expected_loss = float(costs.get_bit_loss(bp)())

    # SavedModel: the loss comes back as a traced function; λ survives.
    bp.save(tmp_path / "sm")
    with tfbp.bitprune_scope():
        loaded = keras.models.load_model(tmp_path / "sm")
    assert_same_model(bp, loaded, digits[2][:64])
    assert costs.get_bit_loss(loaded) is None
    assert float(loaded.losses[0]) == pytest.approx(expected_loss)
    restored = restore_bit_loss(loaded, weighting="memory")  # the weighting is not saved
    assert float(restored.regularization) == pytest.approx(0.0123)
    assert len(loaded.losses) == 1 and float(loaded.losses[0]) == pytest.approx(expected_loss)
    assert restore_bit_loss(loaded) is restored

    # h5 (the order of bitlengths and kernels is kept: tfbp's wrapper on load).
    bp.save(tmp_path / "m.h5")
    with tfbp.bitprune_scope():
        loaded = keras.models.load_model(tmp_path / "m.h5")
    assert_same_model(bp, loaded, digits[2][:64])
    assert loaded.losses == []
    with pytest.raises(ValueError, match="pass regularization"):
        restore_bit_loss(loaded)
    restore_bit_loss(loaded, regularization=0.0123, weighting="memory")
    assert float(loaded.losses[0]) == pytest.approx(expected_loss)

    # The helper does both, and the loaded model keeps learning bitlengths.
    again = load_model(tmp_path / "sm", weighting="memory")
    assert float(costs.get_bit_loss(again).regularization) == pytest.approx(0.0123)
    compile_(again, logits=False)
    before = tfbp.average_bits(again)
    again.fit(digits[0][:128], digits[1][:128], epochs=1, batch_size=64, verbose=0)
    assert tfbp.average_bits(again) != before


@pytest.mark.parametrize("fmt", ["savedmodel", "h5"])
def test_weighting_and_kind_are_saved_and_restored(fmt, digits, tmp_path):
    bp = learning_model(digits, fn=small_cnn)  # trained under weighting="memory"
    # Distinct activation bitlengths, so that the uniform and memory averages differ
    # whatever the CPU (4 steps from 8 bits leave them all within a few hundredths).
    acts = [t for t in costs.quantized_tensors(bp) if t.kind == "activations"]
    for i, t in enumerate(acts):
        t.bits_variable.assign(np.full(t.bits_variable.shape, (3.0 + 1.5 * i) / t.quantizer.bits_lr_multiplier))
    costs.get_bit_loss(bp).kind = "activations"
    expected = float(costs.get_bit_loss(bp)())
    # The two objectives differ here, so restoring "uniform" would show in the loss.
    uniform = 0.05 * float(costs.average_bits_tensor(costs.quantized_tensors(bp), "uniform", "activations"))
    assert abs(uniform - expected) > 1e-3
    path = tmp_path / ("sm" if fmt == "savedmodel" else "m.h5")
    save_model(bp, path)

    loaded = load_model(path)
    loss = costs.get_bit_loss(loaded)
    assert (loss.weighting, loss.kind) == ("memory", "activations")
    assert float(loss.regularization) == pytest.approx(0.05)
    assert float(loss()) == pytest.approx(expected, rel=1e-6)
    assert restore_bit_loss(loaded, weighting="memory", kind="activations") is loss
    # An explicit argument that disagrees with the file is an error naming both values.
    with pytest.raises(ValueError, match="weighting='memory', but weighting='uniform' was given"):
        load_model(path, weighting="uniform")
    with pytest.raises(ValueError, match="kind=.activations., but kind=None was given"):
        load_model(path, kind=None)
    if fmt == "savedmodel":  # what Keras loads by itself: the revived bit loss holds the objective
        with tfbp.bitprune_scope():
            plain = keras.models.load_model(path)
        assert (restore_bit_loss(plain).weighting, costs.get_bit_loss(plain).kind) == ("memory", "activations")


def test_file_without_bit_loss_settings_warns(digits, tmp_path):
    """An h5 file written by model.save (or before the settings were saved) keeps no
    λ or weighting: load_model says what it assumes instead of assuming silently."""
    bp = learning_model(digits, fn=small_cnn, steps=1)
    bp.save(tmp_path / "m.h5")
    with pytest.warns(UserWarning, match="keeps no bit-loss settings"):
        loaded = load_model(tmp_path / "m.h5")
    loss = costs.get_bit_loss(loaded)
    assert (loss.weighting, loss.kind, float(loss.regularization)) == ("uniform", None, 0.0)
    again = load_model(tmp_path / "m.h5", regularization=0.05, weighting="memory")
    assert costs.get_bit_loss(again).weighting == "memory"


def test_checkpoint_resumes_learning(digits, tmp_path):
    x, y = digits[0][:256], digits[1][:256]
    a = learning_model(digits, fn=small_cnn)
    costs.get_bit_loss(a).regularization.assign(0.07)
    ckpt = tf.train.Checkpoint(model=a, optimizer=a.optimizer)
    path = ckpt.save(tmp_path / "ckpt")
    saved_bits = tfbp.bitlengths(a)
    a.fit(x, y, epochs=1, batch_size=64, shuffle=False, verbose=0)

    keras.backend.clear_session()  # the same layer names as `a`
    keras.utils.set_random_seed(1)  # different initial weights: all must come from the checkpoint
    b = tfbp.bitprune_model(small_cnn(), 0.5, "memory", bits_lr_multiplier=20.0)
    compile_(b, logits=False)
    status = tf.train.Checkpoint(model=b, optimizer=b.optimizer).restore(path)
    status.assert_existing_objects_matched()
    assert tfbp.bitlengths(b) == pytest.approx(saved_bits)
    assert float(costs.get_bit_loss(b).regularization) == pytest.approx(0.07)
    b.fit(x, y, epochs=1, batch_size=64, shuffle=False, verbose=0)
    status.assert_consumed()  # optimizer slots and step restored too
    assert int(b.optimizer.iterations) == int(a.optimizer.iterations)
    assert tfbp.bitlengths(b) == pytest.approx(tfbp.bitlengths(a), abs=1e-4)
    for wa, wb in zip(a.weights, b.weights):
        np.testing.assert_allclose(wa.numpy(), wb.numpy(), atol=1e-4, err_msg=wa.name)


def test_keras_v3_format_is_refused_clearly(frozen_models, tmp_path):
    model = frozen_models["sequential"]
    path = tmp_path / "model.keras"
    # What happens without the helpers: saving works, loading fails.
    model.save(path)
    with pytest.raises(ValueError, match="expected .* variables"):
        with tfbp.bitprune_scope():
            keras.models.load_model(path)
    with pytest.raises(ValueError, match="SavedModel"):
        save_model(model, tmp_path / "again.keras")
    with pytest.raises(ValueError, match="SavedModel"):
        load_model(path)
    assert not (tmp_path / "again.keras").exists()
