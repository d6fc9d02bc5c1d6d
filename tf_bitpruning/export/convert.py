"""The converter call: the fake-quant graph to a full-integer flatbuffer."""

from __future__ import annotations

import warnings
from typing import Any, Callable, Iterable, List

import numpy as np
import tensorflow as tf
import tf_keras as keras

from tf_bitpruning.export.checks import ExportError


def as_generator(data) -> Callable[[], Iterable[List[np.ndarray]]]:
    """A converter ``representative_dataset`` from an array (first 500 samples) or a generator function."""
    if callable(data):
        return data
    arrays = np.asarray(data)
    if not np.issubdtype(arrays.dtype, np.integer):  # integer inputs (token ids) stay integer
        arrays = arrays.astype(np.float32)

    def gen():
        for i in range(min(len(arrays), 500)):
            yield [arrays[i:i + 1]]

    return gen


def convert(model: keras.Model, run: Callable[..., Any], representative_dataset,
            inference_input_type, inference_output_type) -> bytes:
    """Converts ``run`` (the model's export graph) with ranges from its fake-quant ops."""
    # Integer inputs (an Embedding's indices) stay integer; the others are float.
    specs = [tf.TensorSpec([None] + list(x.shape[1:]), x.dtype if x.dtype.is_integer else tf.float32,
                           name=x.name.split(":")[0]) for x in model.inputs]
    fn = tf.function(run, input_signature=specs, autograph=False)
    converter = tf.lite.TFLiteConverter.from_concrete_functions([fn.get_concrete_function()], fn)
    converter.optimizations = [tf.lite.Optimize.DEFAULT]
    converter.inference_input_type = inference_input_type
    converter.inference_output_type = inference_output_type
    if representative_dataset is not None:
        # Ranges come from the fake-quant ops; the data only calibrates tensors without one.
        converter.representative_dataset = as_generator(representative_dataset)
        converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message="Statistics for quantized inputs")
            return converter.convert()
    except Exception as e:  # the converter raises many types
        raise ExportError(f"TFLite conversion of '{model.name}' failed: {e}") from e


