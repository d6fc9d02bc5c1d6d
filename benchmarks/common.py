"""What the benchmarks share: the digits images, the breast-cancer table and the Keras/LiteRT agreement count."""

from __future__ import annotations


def breast_cancer():
    """scikit-learn's breast-cancer table, a stratified quarter held out, standardized on the
    training part: ``(x_train, y_train, x_test, y_test)`` (compare.py's MLP task)."""
    from sklearn.datasets import load_breast_cancer
    from sklearn.model_selection import train_test_split
    from sklearn.preprocessing import StandardScaler

    x, y = load_breast_cancer(return_X_y=True)
    xtr, xte, ytr, yte = train_test_split(x, y, test_size=0.25, random_state=0, stratify=y)
    scaler = StandardScaler().fit(xtr)
    return (scaler.transform(xtr).astype("float32"), ytr.astype("int32"),
            scaler.transform(xte).astype("float32"), yte.astype("int32"))


def digits(size: int, raw_255: bool):
    """Digits resized to ``size`` and tiled to 3 channels; [0, 1] or [0, 255]."""
    import numpy as np
    import tensorflow as tf

    from examples import data

    xtr, ytr, xte, yte = data.load("digits")

    def prep(x):
        x = tf.image.resize(x, (size, size)).numpy()
        x = np.repeat(np.clip(x, 0.0, 1.0), 3, axis=-1).astype("float32")
        return x * 255.0 if raw_255 else x

    return prep(xtr), ytr, prep(xte), yte


def agreement(keras_logits, tflite_logits, tie_margin: float) -> dict:
    """Top-1 agreement over inputs whose Keras top-2 margin exceeds ``tie_margin``
    of the logit range; near-ties apart; the largest difference / range."""
    import numpy as np

    logit_range = float(keras_logits.max() - keras_logits.min())
    top2 = np.sort(keras_logits, axis=1)[:, -2:]
    confident = (top2[:, 1] - top2[:, 0]) > tie_margin * logit_range
    same = keras_logits.argmax(1) == tflite_logits.argmax(1)
    return {
        "confident": int(confident.sum()),
        "agreement": float(same[confident].mean()) if confident.any() else float("nan"),
        "near_ties": int((~confident).sum()),
        "near_tie_agreement": float(same[~confident].mean()) if (~confident).any() else float("nan"),
        "max_diff_over_range": float(np.abs(tflite_logits - keras_logits).max() / max(logit_range, 1e-12)),
    }


def fast_bn_statistics(model, momentum: float = 0.9):
    """BatchNormalization moving statistics that follow the batches within a few hundred
    steps (MobileNetV2/V3 use momentum 0.999, so inference after 200 steps would see
    statistics still near their initial values: constant logits). Either Keras."""
    for layer in model.layers:
        if type(layer).__name__ == "BatchNormalization":
            layer.momentum = momentum
    return model


def fit_arrays(x, y, epochs: int, steps_per_epoch: int, batch_size: int, keras3: bool) -> tuple:
    """``(x, y)`` such that ``fit(x, y, batch_size, epochs, steps_per_epoch)`` trains
    ``epochs * steps_per_epoch`` batches. tf_keras streams arrays across epochs; Keras 3
    resumes the last epoch's iterator and ends an epoch early once it runs dry (2
    epochs of 89 steps over 90 batches train 89 + 1: ``BitBudget`` never anneals).
    Under Keras 3 with several epochs: the first ``steps_per_epoch`` batches' examples,
    so that each epoch draws exactly its steps."""
    if not keras3 or epochs == 1:
        return x, y
    n = steps_per_epoch * batch_size
    if n > len(x):
        raise ValueError(f"fit_arrays: {steps_per_epoch} steps of {batch_size} need {n} examples, got {len(x)}.")
    return x[:n], y[:n]


def print_row(row: dict) -> None:
    """What a row's child process (``--one=...``) prints for :func:`row_in_subprocess`."""
    import json

    print("RESULT " + json.dumps(row), flush=True)


def row_in_subprocess(script: str, spec: str, args) -> tuple:
    """``(row, stderr)``: ``script --one=spec ARGS`` run in a fresh process (one model per
    process: no TensorFlow state carried over); ``row`` is None if it printed none."""
    import json
    import subprocess
    import sys

    proc = subprocess.run([sys.executable, script, f"--one={spec}", *args], capture_output=True, text=True)
    lines = [l for l in proc.stdout.splitlines() if l.startswith("RESULT ")]
    return (json.loads(lines[-1][len("RESULT "):]) if lines else None), proc.stderr


def save_page(prefix: str, results: dict, page: str) -> None:
    """Writes a benchmark's rows to ``prefix.json`` and its page to ``prefix.md`` (after
    every row, so a long run that stops leaves both)."""
    import json

    with open(prefix + ".json", "w") as f:
        json.dump(results, f, indent=1)
    with open(prefix + ".md", "w") as f:
        f.write(page)


def accuracy(model, x, y) -> float:
    """Top-1 accuracy of a Keras model's class scores on ``x``, rounded to 4 digits."""
    import numpy as np

    return round(float(np.mean(model.predict(x, verbose=0, batch_size=256).argmax(1) == y)), 4)


def export_learned_first(frozen, path: str, data, **kwargs) -> bool:
    """``export_tflite`` on the learned grids alone, and with ``data`` as the representative
    dataset only where a tensor has none (the export says so). Returns whether data was used."""
    import tf_bitpruning as tfbp
    from tf_bitpruning.export import ExportError

    try:
        tfbp.export_tflite(frozen, path, **kwargs)
        return False
    except ExportError:
        tfbp.export_tflite(frozen, path, representative_dataset=data, **kwargs)
        return True
