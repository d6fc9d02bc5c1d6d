"""keras.applications families end to end at their smallest input (32x32):
bitprune_model -> fit(BitBudget) -> freeze_bitlengths -> fit -> export_tflite ->
LiteRT, on digits resized and tiled to 3 channels. The full table, with tfmot and
every family, is benchmarks/applications.py."""

import numpy as np
import pytest
import tensorflow as tf
import tf_keras as keras

import tf_bitpruning as tfbp
from tf_bitpruning.export import export_tflite
from litert_run import output_step, run_tflite
from tflite_checks import top1_agreement

pytest.importorskip("ai_edge_litert.interpreter")

# family -> whether the model rescales [0, 255] inputs itself
FAMILIES = {"MobileNetV3Small": True, "EfficientNetB0": True, "DenseNet121": False}
SIZE = 32


def _images(x, raw_255):
    x = np.repeat(np.clip(tf.image.resize(x, (SIZE, SIZE)).numpy(), 0.0, 1.0), 3, axis=-1)
    return x * 255.0 if raw_255 else x


@pytest.mark.slow
@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_application_end_to_end(family, digits, tmp_path):
    xtr, ytr = _images(digits[0], FAMILIES[family]), digits[1]
    x = _images(digits[2], FAMILIES[family])[:128]
    model = getattr(keras.applications, family)(weights=None, input_shape=(SIZE, SIZE, 3), classes=10,
                                                classifier_activation=None)
    for layer in model.layers:  # moving statistics that follow 60 steps (MobileNetV3: 0.999)
        if isinstance(layer, keras.layers.BatchNormalization):
            layer.momentum = 0.9
    loss = keras.losses.SparseCategoricalCrossentropy(from_logits=True)
    bp = tfbp.bitprune_model(model, regularization=0.01)
    bp.compile(keras.optimizers.Adam(1e-3), loss)
    bp.fit(xtr, ytr, batch_size=16, epochs=2, steps_per_epoch=20, verbose=0,
           callbacks=[tfbp.BitBudget(6.0)])
    frozen = tfbp.freeze_bitlengths(bp)
    frozen.compile(keras.optimizers.Adam(2e-4), loss)
    frozen.fit(xtr, ytr, batch_size=16, epochs=1, steps_per_epoch=20, verbose=0)
    path = tmp_path / f"{family}.tflite"
    export_tflite(frozen, path, representative_dataset=xtr[:32])
    ref = frozen.predict(x, verbose=0, batch_size=32)
    got = run_tflite(path, x)
    a = top1_agreement(got, ref, output_step(path))
    # Where Keras' top two are more than 2 output steps apart (one rounding each way
    # cannot swap them), top-1 agrees; hidden tensors that round the other way at a
    # grid midpoint move a few outputs further, so ≥ 98 % rather than all.
    assert a.rate >= 0.98, a
    # After 60 steps these deep networks separate their logits only partly: ties are
    # counted apart, and at least a quarter of the 128 examples must be decided for
    # the comparison above to mean something.
    assert a.decided >= 32, a
