"""Models the tests share, and their training to a frozen bit-pruned model."""

import tensorflow as tf
import tf_keras as keras

from examples.models import small_cnn  # noqa: F401  (the tests import it from here)


def bn_add_cnn():
    """Functional model with BatchNormalization and Add: Conv-BN-ReLU, a
    DepthwiseConv-BN-ReLU-Conv1x1-BN branch added back, ReLU, Dense logits."""
    L = keras.layers
    inputs = keras.Input((8, 8, 1))
    x = L.Conv2D(16, 3, padding="same", use_bias=False)(inputs)
    x = L.ReLU()(L.BatchNormalization(momentum=0.9)(x))
    y = L.DepthwiseConv2D(3, padding="same")(x)
    y = L.ReLU()(L.BatchNormalization(momentum=0.9)(y))
    y = L.BatchNormalization(momentum=0.9)(L.Conv2D(16, 1)(y))
    z = L.ReLU()(L.Add()([x, y]))
    z = L.Flatten()(L.MaxPooling2D()(z))
    return keras.Model(inputs, L.Dense(10)(z))


def train_frozen(model, digits, weight_bits, activation_bits, epochs=(3, 2)):
    """Bit-prunes ``model`` on digits, sets the given bitlengths (one per weight /
    activation tensor, in ``quantized_tensors`` order), freezes and fine-tunes it."""
    import tf_bitpruning as tfbp
    from tf_bitpruning import costs

    xtr, ytr, _, _ = digits
    logits = model.layers[-1].activation is keras.activations.linear
    loss = keras.losses.SparseCategoricalCrossentropy(from_logits=logits)
    bp = tfbp.bitprune_model(model, regularization=0.02, bits_lr_multiplier=20.0)
    bp.compile(keras.optimizers.Adam(3e-3), loss, metrics=["accuracy"])
    bp.fit(xtr, ytr, epochs=epochs[0], batch_size=64, verbose=0)
    plan = {"weights": list(weight_bits), "activations": list(activation_bits)}
    for t in costs.quantized_tensors(bp):
        b = plan[t.kind].pop(0)
        t.bits_variable.assign(tf.fill(t.bits_variable.shape, b / t.quantizer.bits_lr_multiplier))
    assert not plan["weights"] and not plan["activations"], "one bitlength per tensor"
    frozen = tfbp.freeze_bitlengths(bp)
    frozen.compile(keras.optimizers.Adam(5e-4), loss, metrics=["accuracy"])
    frozen.fit(xtr, ytr, epochs=epochs[1], batch_size=64, verbose=0)
    return frozen
