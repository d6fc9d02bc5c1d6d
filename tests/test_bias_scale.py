"""The int32 bias of a kernel op on the grid the op adds it on (export/bias_scale.py).

TFLite's FULLY_CONNECTED (and CONV_2D, DEPTHWISE_CONV_2D, TRANSPOSE_CONV) adds a
bias's int32 codes as if their scale were ``input scale × filter scale``, whatever
scale the bias states. The converter once stated another (an unrolled GRU's input
projections: tests/test_sequence_kinds.py::test_trained_gru_file_agrees_with_keras);
:func:`rescale_biases` puts such a bias back on its op's grid.
"""

import numpy as np
import pytest
import tensorflow as tf

from tf_bitpruning.export.bias_scale import rescale_biases
from tf_bitpruning.export.flatbuffer import op_name, read, to_bytes

pytest.importorskip("ai_edge_litert.interpreter")


def _dense_file() -> bytes:
    """A full-integer FULLY_CONNECTED (4 -> 3) with a bias of a few of its steps."""
    kernel = tf.constant(np.random.default_rng(0).normal(size=(4, 3)).astype(np.float32))
    bias = tf.constant([0.5, -0.25, 1.0])
    fn = tf.function(lambda x: tf.matmul(x, kernel) + bias, input_signature=[tf.TensorSpec([1, 4], tf.float32)])
    converter = tf.lite.TFLiteConverter.from_concrete_functions([fn.get_concrete_function()], fn)
    converter.optimizations = [tf.lite.Optimize.DEFAULT]
    data = np.random.default_rng(1).uniform(-1, 1, (32, 1, 4)).astype(np.float32)
    converter.representative_dataset = lambda: ([x] for x in data)
    converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
    return converter.convert()


def _run(content: bytes, x: np.ndarray) -> np.ndarray:
    from ai_edge_litert.interpreter import Interpreter

    it = Interpreter(model_content=content)
    it.allocate_tensors()
    out = []
    for row in x:
        it.set_tensor(it.get_input_details()[0]["index"], row[None])
        it.invoke()
        out.append(it.get_tensor(it.get_output_details()[0]["index"])[0])
    return np.array(out)


def test_a_bias_stated_on_another_grid_is_put_back_on_its_ops():
    content = _dense_file()
    x = np.random.default_rng(2).uniform(-1, 1, (16, 4)).astype(np.float32)
    ref = _run(content, x)
    model_obj = read(content)
    sg = model_obj.subgraphs[0]
    (fc,) = [op for op in sg.operators if op_name(model_obj, op) == "FULLY_CONNECTED"]
    bias = sg.tensors[fc.inputs[2]]
    assert rescale_biases(model_obj) == []  # the converter's own file: every bias on its op's grid
    # The same values stated at a 4x finer scale (codes 4x larger), as the converter wrote the GRU's:
    codes = np.frombuffer(bytes(model_obj.buffers[bias.buffer].data), "<i4")
    model_obj.buffers[bias.buffer].data = np.frombuffer((codes * 4).astype("<i4").tobytes(), np.uint8).copy()
    bias.quantization.scale = [s / 4 for s in bias.quantization.scale]
    tampered = _run(to_bytes(model_obj), x)
    assert np.abs(tampered - ref).max() > 0.5, "the op adds the codes on its own grid: 4x the bias"
    assert len(rescale_biases(model_obj)) == 1
    np.testing.assert_array_equal(_run(to_bytes(model_obj), x), ref)  # the converter's codes again
    assert rescale_biases(model_obj) == []
