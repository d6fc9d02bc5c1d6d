"""Uniform QAT with our quantizer: ``weight_bits=(n, n), activation_bits=(n, n)``.

The comparison's ``fixed`` lever (benchmarks/compare.py, docs/accuracy.md) trains every
tensor at n bits with the other levers (learned ranges and clips), to tell learned
bitlengths from a better quantizer. That holds only if the bitlengths cannot move:
a bit loss as strong as we like must leave every tensor at n, during ``fit`` and after
``freeze_bitlengths``.
"""

import keras as keras3
import numpy as np
import pytest
import tf_keras

import tf_bitpruning as tfbp

KERASES = {"tf_keras": tf_keras, "keras3": keras3}


@pytest.mark.slow
@pytest.mark.parametrize("kname", ["tf_keras", "keras3"])
def test_equal_bounds_hold_every_tensor_at_n_bits_under_a_strong_bit_loss(kname):
    K = KERASES[kname]
    rng = np.random.default_rng(0)
    x = rng.normal(size=(64, 12)).astype("float32")
    y = (x[:, 0] > 0).astype("int32")
    model = K.Sequential([K.Input((12,)), K.layers.Dense(8, activation="relu"),
                          K.layers.Dense(2, activation="softmax")])
    bp = tfbp.bitprune_model(model, regularization=10.0, weight_bits=(3, 3), activation_bits=(3, 3),
                             activation_range="learned", weight_clip="learned")
    bp.compile(K.optimizers.Adam(0.05), "sparse_categorical_crossentropy")
    before = [w.copy() for w in bp.get_weights()]
    bp.fit(x, y, epochs=2, batch_size=16, verbose=0)
    assert any(not np.array_equal(a, b) for a, b in zip(before, bp.get_weights()))  # it trained
    bits = tfbp.bitlengths(bp)
    assert len(bits) == 5 and set(bits.values()) == {3.0}, bits
    frozen = tfbp.freeze_bitlengths(bp, target_bits=3.0)
    assert set(tfbp.bitlengths(frozen).values()) == {3.0}
    assert tfbp.average_bits(frozen) == 3.0
