"""InceptionV3's patterns in the export (the agreement of its branch pooling with
LiteRT is checked in test_export_agreement.py):

- average pooling as depthwise convs that compute TensorFlow's pooling, borders of
  'same' windows included (graph.avg_pool_as_depthwise);
- a concatenation inside a concatenation (mixed9_0 in mixed9): its quantizer is
  dropped, and its inputs go onto the outer one's grid (plan.concat_grid).
"""

import numpy as np
import pytest
import tensorflow as tf
import tf_keras as keras
from tensorflow.lite.python import schema_py_generated as schema
from tensorflow.lite.tools import flatbuffer_utils

import tf_bitpruning as tfbp
from tf_bitpruning import costs
from tf_bitpruning.export.graph import avg_pool_as_depthwise
from tf_bitpruning.export.plan import pool_bands

L = keras.layers


@pytest.mark.parametrize("size,pool,stride,padding", [
    ((7, 7), 3, 1, "same"),     # InceptionV3's branch pooling
    ((8, 5), 3, 2, "same"),     # even/odd sizes, strided: windows cut on one side only
    ((6, 7), (2, 3), 2, "same"),    # TF's CPU depthwise conv takes equal strides only (as_depthwise)
    ((5, 5), 5, 1, "same"),     # a window wider than the inside: every output its own band
    ((1, 1), 3, 1, "same"),
    ((7, 7), 2, 2, "valid"),    # 'valid' stays one conv
])
def test_average_pooling_as_depthwise_convs_is_tensorflows_pooling(size, pool, stride, padding):
    x = tf.constant(np.random.default_rng(0).uniform(-1, 1, (2,) + size + (3,)), tf.float32)
    layer = keras.layers.AveragePooling2D(pool, strides=stride, padding=padding)
    want = layer(x).numpy()
    got = avg_pool_as_depthwise(layer, x).numpy()
    assert got.shape == want.shape
    # taps 1/k are one int8 code (127 at step 1/(127 k)): exact up to float rounding
    np.testing.assert_allclose(got, want, atol=1e-6)


def test_pool_bands_cover_every_output_once():
    for size in range(1, 12):
        for pool in range(1, 6):
            for stride in range(1, 4):
                bands = pool_bands(size, pool, stride, True)
                assert sum(n for _, _, n in bands) == -(-size // stride)
                assert all(first >= 0 and first + (n - 1) * stride + window <= size and 1 <= window <= pool
                           for first, window, n in bands), (size, pool, stride, bands)


@pytest.mark.slow
def test_concatenation_inside_a_concatenation_is_integer(tmp_path):
    """Below 8 bits the outer concatenation clips (a RELU) before its fake quant, which
    the converter does not move through the inner one: its convs stayed float
    (ExportError). Now both concatenations' inputs share the outer grid."""
    def cbr(x, n, k):
        return L.Activation("relu")(L.BatchNormalization(scale=False)(
            L.Conv2D(n, k, padding="same", use_bias=False)(x)))

    inputs = keras.Input((4, 4, 3))
    x = cbr(inputs, 8, 3)
    inner = L.Concatenate(name="inner")([cbr(x, 4, (1, 3)), cbr(x, 4, (3, 1))])
    outer = L.Concatenate(name="outer")([cbr(x, 4, 1), inner])
    model = keras.Model(inputs, L.Dense(10)(L.GlobalAveragePooling2D()(outer)))
    bp = tfbp.bitprune_model(model, init_bits=5.0)
    bp.compile("adam", keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    rng = np.random.default_rng(0)
    bp.fit(rng.uniform(0, 1, (64, 4, 4, 3)).astype("float32"), rng.integers(0, 10, 64), epochs=1, verbose=0)
    frozen = tfbp.freeze_bitlengths(bp)
    assert not [t for t in costs.quantized_tensors(frozen) if t.wrapper == "quant_inner"]
    path = tmp_path / "nested.tflite"
    tfbp.export_tflite(frozen, path)  # full integer (ExportError otherwise), no calibration data
    model_obj = flatbuffer_utils.read_model(str(path))
    sg = model_obj.subgraphs[0]
    concats = [op for op in sg.operators
               if model_obj.operatorCodes[op.opcodeIndex].builtinCode == schema.BuiltinOperator.CONCATENATION]
    assert len(concats) == 2
    scales = {float(sg.tensors[i].quantization.scale[0]) for op in concats for i in list(op.inputs) + list(op.outputs)}
    assert len(scales) == 1, scales  # every part on the outer concatenation's grid
