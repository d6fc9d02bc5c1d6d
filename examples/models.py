"""The small models the examples, benchmarks and tests share, for either Keras.

Every builder takes the Keras module to build with (``keras=``): ``tf_keras``
(Keras 2, the default, so that existing callers keep building tf_keras models) or
Keras 3 (``import keras``). :func:`resolve_keras` turns a ``--keras=2|3`` choice
into that module.
"""

from __future__ import annotations

from types import ModuleType
from typing import Optional, Tuple, Union

import tf_keras

KERAS_CHOICES = ("2", "3")


def resolve_keras(choice: Union[None, int, str] = None) -> Tuple[ModuleType, str]:
    """The Keras module to build and train with, and a line that says which one and why.

    ``choice``: ``2`` (``tf_keras``, Keras 2), ``3`` (Keras 3, ``import keras``) or
    None: whichever ``import keras`` gives in this environment, i.e. Keras 3 when
    its ``keras.__version__`` starts with 3 (TensorFlow >= 2.16 installs it), else
    ``tf_keras`` (``keras`` missing or a Keras 2 package).

    >>> keras, said = resolve_keras(2)
    >>> keras.__name__, said.startswith("Keras 2 (tf_keras "), said.endswith("as asked (--keras=2)")
    ('tf_keras', True, True)
    """
    if choice is not None and str(choice) not in KERAS_CHOICES:
        raise ValueError(f"--keras must be 2 or 3 (or unset: what `import keras` gives), got {choice!r}.")
    default = choice is None
    if default:
        try:
            import keras
        except ImportError:
            keras = None
        found = getattr(keras, "__version__", "") if keras is not None else ""
        choice = "3" if found.startswith("3") else "2"
        why = (f"the default: `import keras` gives Keras {found}" if found else
               "the default: `import keras` finds no Keras")
        if choice == "2" and found:
            why += " (Keras 2: tf_keras is used)"
    else:
        choice, why = str(choice), f"as asked (--keras={choice})"
    if choice == "3":
        import keras

        if not keras.__version__.startswith("3"):
            raise ValueError(f"--keras=3: `import keras` gives Keras {keras.__version__}, not Keras 3 "
                             f"(pip install 'keras>=3.10').")
        backend = keras.backend.backend()
        if backend != "tensorflow":
            raise ValueError(f"--keras=3: Keras 3 runs on the '{backend}' backend here; tf_bitpruning's quantizers "
                             f"are TensorFlow ops, so set KERAS_BACKEND=tensorflow (see docs/keras3.md).")
        return keras, f"Keras 3 (keras {keras.__version__}, TensorFlow backend), {why}"
    return tf_keras, f"Keras 2 (tf_keras {tf_keras.__version__}), {why}"


def small_cnn(keras: Optional[ModuleType] = None):
    """The 8x8 digits CNN: two convolutions and a classifier, 9.9k parameters."""
    keras = tf_keras if keras is None else keras
    L = keras.layers
    return keras.Sequential([
        keras.Input((8, 8, 1)),
        L.Conv2D(16, 3, padding="same", activation="relu"),
        L.MaxPooling2D(),
        L.Conv2D(32, 3, padding="same", activation="relu"),
        L.Flatten(),
        L.Dense(10, activation="softmax"),
    ])


def cnn(input_shape, classes: int = 10, keras: Optional[ModuleType] = None):
    """A Conv-BN-ReLU CNN for any image size (the end-to-end example's model)."""
    keras = tf_keras if keras is None else keras
    L = keras.layers
    inp = keras.Input(tuple(input_shape))
    x = L.Conv2D(16, 3, padding="same")(inp)
    x = L.BatchNormalization()(x)
    x = L.ReLU()(x)
    x = L.MaxPooling2D()(x)
    x = L.Conv2D(32, 3, padding="same", activation="relu")(x)
    x = L.MaxPooling2D()(x) if input_shape[0] > 8 else x
    x = L.Flatten()(x)
    out = L.Dense(classes, activation="softmax")(x)
    return keras.Model(inp, out)
