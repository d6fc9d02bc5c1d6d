"""Distillation from the float model: its outputs as a second target of ``fit``.

>>> import tf_keras as keras
>>> import tf_bitpruning as tfbp
>>> teacher = keras.Sequential([keras.Input((4,)), keras.layers.Dense(3, activation="softmax")])
>>> bp = tfbp.bitprune_model(teacher)
>>> bp.compile("adam", "sparse_categorical_crossentropy", metrics=["accuracy"])
>>> callbacks = [tfbp.Distill(teacher, weight=1.0, temperature=2.0)]  # with BitBudget, in fit

The loss ``fit`` minimizes becomes the compiled loss (with the bit loss and any other
``model.losses``) plus ``weight · T² · KL(softmax(t / T) ‖ softmax(s / T))``, ``t`` and
``s`` the teacher's and the student's logits (Hinton et al. 2015). Added rather than
blended, so the balance of task loss and bit loss that ``BitBudget`` steers stays the same.
"""

from __future__ import annotations

import types

import tensorflow as tf
import tf_keras as keras

from tf_bitpruning.frontend import frontend_for

__all__ = ["Distill", "distillation_loss"]


def _logits(outputs: tf.Tensor, from_logits: bool) -> tf.Tensor:
    """Logits of class scores (probabilities: their log; one sigmoid unit: the two classes)."""
    outputs = tf.cast(outputs, tf.float32)
    if from_logits:
        return tf.concat([tf.zeros_like(outputs), outputs], -1) if outputs.shape[-1] == 1 else outputs
    if outputs.shape[-1] == 1:
        outputs = tf.concat([1.0 - outputs, outputs], -1)
    return tf.math.log(tf.maximum(outputs, 1e-12))


def distillation_loss(student: tf.Tensor, teacher: tf.Tensor, temperature: float = 2.0,
                      from_logits: bool = False) -> tf.Tensor:
    """``T² · mean over the batch of KL(softmax(t / T) ‖ softmax(s / T))``.

    ``student``, ``teacher``: outputs of shape ``(batch, classes)``, probabilities
    (``from_logits=False``, e.g. a softmax output) or logits. Its gradient to the
    student's logits is ``T · (softmax(s / T) - softmax(t / T)) / batch``.

    >>> float(distillation_loss(tf.constant([[0.5, 0.5]]), tf.constant([[0.5, 0.5]])))
    0.0
    """
    t = tf.stop_gradient(_logits(teacher, from_logits)) / temperature
    s = _logits(student, from_logits) / temperature
    p = tf.nn.softmax(t)
    kl = tf.reduce_sum(p * (tf.nn.log_softmax(t) - tf.nn.log_softmax(s)), axis=-1)
    return temperature ** 2 * tf.reduce_mean(kl)


class Distill(keras.callbacks.Callback):
    """Adds the float model's outputs as a second target while a model fits.

    ``model.fit(x, y, callbacks=[tfbp.BitBudget(...), tfbp.Distill(float_model)])``,
    in the learning phase and again when fine-tuning the frozen model. The teacher
    runs on each training batch (its weights are not trained); the model's
    ``compute_loss`` adds :func:`distillation_loss` times ``weight`` for the fit's
    duration and is restored after (so ``evaluate`` reports the plain loss). Under
    tf_keras the logged ``loss`` is the compiled one; under Keras 3 it includes the term
    (Keras 3 logs what ``compute_loss`` returns).

    Args:
      teacher: a model of the same Keras as the student (tf_keras or Keras 3) with the
        same inputs and outputs (the float model).
      weight: the factor of the distillation term (the compiled loss keeps factor 1).
      temperature: the softmax temperature ``T`` of both models' logits.
      from_logits: the models output logits (default: probabilities, e.g. softmax).
    """

    def __init__(self, teacher: keras.Model, weight: float = 1.0, temperature: float = 2.0,
                 from_logits: bool = False):
        super().__init__()
        if not float(weight) >= 0 or not float(temperature) > 0:
            raise ValueError(f"Distill: need weight >= 0 and temperature > 0, got weight={weight}, "
                             f"temperature={temperature}.")
        self.teacher, self.weight, self.temperature = teacher, float(weight), float(temperature)
        self.from_logits = bool(from_logits)

    def _compute_loss(self, model, x=None, y=None, y_pred=None, sample_weight=None, **kwargs):
        loss = type(model).compute_loss(model, x, y, y_pred, sample_weight, **kwargs)  # Keras 3: training=
        term = distillation_loss(y_pred, self.teacher(x, training=False), self.temperature, self.from_logits)
        return loss + self.weight * term

    def on_train_begin(self, logs=None):
        model = self.model
        front = frontend_for(model)
        if not isinstance(model, front.model_class):
            raise ValueError(f"Distill: needs a Keras model, got {type(model).__name__}.")
        if not isinstance(self.teacher, front.model_class):
            raise ValueError(f"Distill: the teacher '{getattr(self.teacher, 'name', self.teacher)}' is not a "
                             f"{front.name} model like the student '{model.name}': build both with one Keras.")
        if "compute_loss" in vars(model):
            raise ValueError(f"Distill: model '{model.name}' already has a compute_loss of its own "
                             f"(two Distill callbacks in one fit?). Pass one.")
        model.compute_loss = types.MethodType(self._compute_loss, model)
        model.make_train_function(force=True)  # traced with the new loss (both Kerases set it)

    def on_train_end(self, logs=None):
        if "compute_loss" in vars(self.model):
            del self.model.compute_loss
        self.model.train_function = None  # the next fit traces the model's own loss again
