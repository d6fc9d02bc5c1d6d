"""The coverage benchmarks train the steps they report under both Kerases
(benchmarks/common.py ``fit_arrays``): Keras 3 ends an epoch early where tf_keras
streams arrays on, and a learning phase cut short never anneals to its budget."""

import keras as keras3
import numpy as np
import pytest
import tf_keras

from benchmarks.common import fit_arrays

KERASES = {"tf_keras": tf_keras, "keras3": keras3}


@pytest.mark.parametrize("name", list(KERASES))
def test_fit_arrays_trains_every_planned_step(name):
    """37 examples in batches of 4 are 10 batches (the last partial); 2 epochs of 9 steps
    must train 18 batches (Keras 3 alone, given the arrays, trains 9 + 1)."""
    keras = KERASES[name]
    x, y = np.zeros((37, 3), np.float32), np.zeros((37, 1), np.float32)
    model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(1)])
    model.compile("sgd", "mse")
    seen = []

    class Count(keras.callbacks.Callback):
        def on_train_batch_end(self, batch, logs=None):
            seen.append(batch)

    epochs, steps = 2, 9
    xs, ys = fit_arrays(x, y, epochs, steps, 4, keras3=keras is keras3)
    model.fit(xs, ys, batch_size=4, epochs=epochs, steps_per_epoch=steps, verbose=0, callbacks=[Count()])
    assert len(seen) == epochs * steps


def test_fit_arrays_refuses_too_few_examples():
    with pytest.raises(ValueError, match="need 40 examples, got 37"):
        fit_arrays(np.zeros((37, 3)), np.zeros(37), 2, 10, 4, keras3=True)
