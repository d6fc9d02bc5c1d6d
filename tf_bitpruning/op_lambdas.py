"""``TFOpLambda`` layers (``x + 3``, ``tf.math.multiply(x, 1/6)``) under tfmot.

Keras records TF functions called on Keras tensors as ``TFOpLambda`` layers,
with the constant operands as call keywords. Two things keep tfmot from
wrapping them, fixed here:

- tfmot's ``QuantizeAnnotate`` serializes its call with the first argument in a
  list, which the ``TFOpLambda`` then receives as a list: :class:`OpLambdaAnnotate`
  serializes it the way the ``TFOpLambda`` does;
- tfmot's ``QuantizeWrapper`` asks the layer for its output shape to build the
  output quantizer, which a ``TFOpLambda`` cannot compute without its
  constants: :class:`ElementwiseOpLambda` answers with the input shape (the
  activation quantizer's variables are scalars, so only the call matters).

And one layer tfmot cannot call as it is: tf_keras' ``RandomCrop`` (:class:`RandomCrop`).
"""

from __future__ import annotations

import tensorflow as tf
import tf_keras

from tf_bitpruning import _compat

TFOpLambda = _compat.TFOpLambda
SlicingOpLambda = _compat.SlicingOpLambda


class ElementwiseOpLambda(TFOpLambda):
    """A ``TFOpLambda`` of elementwise math whose output tfmot quantizes."""

    def compute_output_shape(self, input_shape):
        return input_shape


class OpLambdaAnnotate(_compat.QuantizeAnnotate):
    """tfmot's annotation of a ``TFOpLambda``, serialized like the ``TFOpLambda``
    itself (first argument as given, constants by keyword)."""

    def __init__(self, layer, quantize_config=None, **kwargs):
        super().__init__(layer, quantize_config, **kwargs)
        self._preserve_input_structure_in_config = True


class RandomCrop(tf_keras.layers.RandomCrop):
    """tf_keras' ``RandomCrop``, taking tfmot's ``training`` (``None`` or the learning phase
    as an int, which its ``tf.reduce_all`` refuses) as a bool; the same computation (a
    random crop while training, ``smart_resize`` to the target size at inference), as a
    graph without ``tf.cond`` and random ops at inference (which TFLite cannot convert).
    ``identity_at_inference``: a Keras 3 ``RandomCrop`` in its tf_keras twin (the export):
    Keras 3 (3.15) returns its input unchanged at inference, whatever its declared shape."""

    def __init__(self, height, width, identity_at_inference: bool = False, **kwargs):
        super().__init__(height, width, **kwargs)
        self.identity_at_inference = identity_at_inference

    def call(self, inputs, training=None):
        training = tf_keras.backend.learning_phase() if training is None else training
        if isinstance(training, (bool, int)) and not training:
            if self.identity_at_inference:
                return inputs
            resized = tf_keras.preprocessing.image.smart_resize(inputs, [self.height, self.width])
            return tf.cast(resized, self.compute_dtype)
        return super().call(inputs, training=tf.cast(training, tf.bool))

    def get_config(self):
        return dict(super().get_config(), identity_at_inference=self.identity_at_inference)


def annotate(layer: TFOpLambda, quantize_config=None) -> OpLambdaAnnotate:
    """The annotation of an elementwise ``TFOpLambda`` (a fresh layer, same function)."""
    return OpLambdaAnnotate(ElementwiseOpLambda.from_config(layer.get_config()), quantize_config)


CUSTOM_OBJECTS = {"ElementwiseOpLambda": ElementwiseOpLambda, "OpLambdaAnnotate": OpLambdaAnnotate,
                  "RandomCrop": RandomCrop}
