"""Datasets for the examples: scikit-learn's digits offline, Keras' downloads online."""

from __future__ import annotations

from typing import Tuple

import numpy as np

DATASETS = ("digits", "mnist", "fashion_mnist", "cifar10")

Split = Tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]


def load(name: str = "digits", keras=None) -> Split:
    """``(x_train, y_train, x_test, y_test)``, images in [0, 1] with a channel axis.

    ``digits`` (8x8 handwritten digits) ships inside scikit-learn and needs no
    network; the others are downloaded by ``keras.datasets`` on first use (of
    ``keras``, the Keras module the example runs with; default tf_keras). The
    arrays are plain NumPy for either Keras.
    """
    if name == "digits":
        from sklearn.datasets import load_digits
        from sklearn.model_selection import train_test_split

        x, y = load_digits(return_X_y=True)
        x = (x / 16.0).astype("float32").reshape(-1, 8, 8, 1)
        xtr, xte, ytr, yte = train_test_split(x, y, test_size=0.2, random_state=0, stratify=y)
        return xtr, ytr.astype("int32"), xte, yte.astype("int32")
    if name not in DATASETS:
        raise ValueError(f"Unknown dataset {name!r}; choose one of {DATASETS}.")
    if keras is None:
        import tf_keras as keras

    try:
        (xtr, ytr), (xte, yte) = getattr(keras.datasets, name).load_data()
    except Exception as err:  # network errors come in many types
        raise SystemExit(
            f"Could not download '{name}' through keras.datasets ({type(err).__name__}: {err}). "
            f"This needs internet access; use --dataset=digits (offline, ships with scikit-learn).") from err
    xtr, xte = (a.astype("float32") / 255.0 for a in (xtr, xte))
    if xtr.ndim == 3:
        xtr, xte = xtr[..., None], xte[..., None]
    return xtr, ytr.reshape(-1).astype("int32"), xte, yte.reshape(-1).astype("int32")
