"""Distillation from the float model: tfbp.distillation_loss and the tfbp.Distill callback."""

import numpy as np
import pytest
import tensorflow as tf
import keras as keras3
import tf_keras as keras

import tf_bitpruning as tfbp

KERASES = {"tf_keras": keras, "keras3": keras3}


def _softmax(z):
    e = np.exp(z - z.max(-1, keepdims=True))
    return e / e.sum(-1, keepdims=True)


S = np.array([[1.0, -0.5, 0.2], [0.3, 0.1, -1.2]], np.float32)
T = np.array([[2.0, 0.0, -1.0], [-0.4, 0.9, 0.0]], np.float32)


@pytest.mark.parametrize("temperature", [1.0, 2.0, 4.0])
def test_loss_value_is_t2_kl_and_gradient_is_the_softmax_difference(temperature):
    p, q = _softmax(T / temperature), _softmax(S / temperature)
    expected = temperature ** 2 * np.mean(np.sum(p * (np.log(p) - np.log(q)), -1))
    s = tf.Variable(S)
    with tf.GradientTape() as tape:
        loss = tfbp.distillation_loss(s, tf.constant(T), temperature, from_logits=True)
    assert float(loss) == pytest.approx(expected, rel=1e-5)
    # ∂/∂s of T² · KL = T · (softmax(s / T) - softmax(t / T)), averaged over the batch.
    np.testing.assert_allclose(tape.gradient(loss, s).numpy(), temperature * (q - p) / len(S), atol=1e-6)


def test_probabilities_are_read_as_their_logs():
    # Softmax outputs give the same loss as their logits; equal outputs give 0.
    probs_s, probs_t = _softmax(S), _softmax(T)
    a = tfbp.distillation_loss(tf.constant(probs_s), tf.constant(probs_t), 2.0)
    b = tfbp.distillation_loss(tf.constant(S), tf.constant(T), 2.0, from_logits=True)
    assert float(a) == pytest.approx(float(b), rel=1e-4)
    assert float(tfbp.distillation_loss(tf.constant(probs_t), tf.constant(probs_t))) == pytest.approx(0.0, abs=1e-6)
    # One sigmoid unit is the two-class case.
    sig = tfbp.distillation_loss(tf.constant([[0.8]]), tf.constant([[0.3]]), 1.0)
    two = tfbp.distillation_loss(tf.constant([[0.2, 0.8]]), tf.constant([[0.7, 0.3]]), 1.0)
    assert float(sig) == pytest.approx(float(two), rel=1e-5)


def _models(K=keras):
    teacher = K.Sequential([K.Input((4,)), K.layers.Dense(3, activation="softmax")])
    student = K.Sequential([K.Input((4,)), K.layers.Dense(3, activation="softmax")])
    student.compile(K.optimizers.SGD(1.0), "sparse_categorical_crossentropy")
    return teacher, student


def _sgd_step(student, x, y, weight, teacher):
    """The weights after one SGD(1.0) step on the compiled loss plus weight · distillation."""
    with tf.GradientTape() as tape:
        out = student(x)
        loss = tf.reduce_mean(keras.losses.sparse_categorical_crossentropy(y, out))
        loss += weight * tfbp.distillation_loss(out, teacher(x), 2.0)
    grads = tape.gradient(loss, student.trainable_variables)
    return [(v - g).numpy() for v, g in zip(student.trainable_variables, grads)]


@pytest.mark.parametrize("kname", ["tf_keras", "keras3"])
def test_callback_trains_on_the_weighted_term_during_fit_only(kname):
    teacher, student = _models(KERASES[kname])
    x = np.random.default_rng(0).normal(size=(8, 4)).astype(np.float32)
    y = np.arange(8) % 3
    assert float(tfbp.distillation_loss(student(x), teacher(x), 2.0)) > 0.01
    start = student.get_weights()
    expected = _sgd_step(student, x, y, 0.5, teacher)
    student.fit(x, y, batch_size=8, epochs=1, verbose=0, callbacks=[tfbp.Distill(teacher, weight=0.5)])
    for got, want in zip(student.get_weights(), expected):
        np.testing.assert_allclose(got, want, atol=1e-5)
    # Restored after the fit: the next fit trains on the compiled loss alone.
    assert "compute_loss" not in vars(student)
    student.set_weights(start)
    expected = _sgd_step(student, x, y, 0.0, teacher)
    student.fit(x, y, batch_size=8, verbose=0)
    for got, want in zip(student.get_weights(), expected):
        np.testing.assert_allclose(got, want, atol=1e-5)
    with pytest.raises(ValueError, match="temperature"):
        tfbp.Distill(teacher, temperature=0.0)


def test_teacher_and_student_of_one_keras():
    teacher, _ = _models(keras3)
    _, student = _models(keras)
    x = np.zeros((4, 4), np.float32)
    with pytest.raises(ValueError, match="not a tf_keras model like the student"):
        student.fit(x, np.zeros(4), verbose=0, callbacks=[tfbp.Distill(teacher)])
