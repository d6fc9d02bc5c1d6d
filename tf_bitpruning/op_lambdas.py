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
"""

from __future__ import annotations

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


def annotate(layer: TFOpLambda, quantize_config=None) -> OpLambdaAnnotate:
    """The annotation of an elementwise ``TFOpLambda`` (a fresh layer, same function)."""
    return OpLambdaAnnotate(ElementwiseOpLambda.from_config(layer.get_config()), quantize_config)


CUSTOM_OBJECTS = {"ElementwiseOpLambda": ElementwiseOpLambda, "OpLambdaAnnotate": OpLambdaAnnotate}
