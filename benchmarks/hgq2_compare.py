"""HGQ2 at several regularization strengths on the networks of benchmarks/compare.py.

HGQ2 (``pip install hgq2``; Keras 3) learns a bitwidth per weight and per activation element
against its resource estimate (EBOPs) weighted by β. Here it gets compare.py's digits CNN
(Conv-BN-ReLU, max-pool, Conv-ReLU, Dense-softmax) and breast-cancer MLP (Dense 64, 32, 2)
as HGQ2 layers (``QConv2D``, ``QBatchNormalization``, ``QMaxPooling2D``, ``QDense``), the same
data splits, and about as many epochs as BitPruning's whole pipeline in the longer-training
pages (float + learning phase + fine-tuning: 20 + 100 + 30 = 150 on digits; the MLP's recipe
trains 20 + 120 + 30 = 170): 150 epochs from scratch, Adam from 3e-3 under a cosine decay,
batch 32, all the training data, the last epoch; weights start at 4 bits (``kbi``,
``i0 = 0``), activations at 4 fraction bits (``kif``). ``--betas=float,...`` adds the control:
the same network as plain Keras layers trained the same way. Bits are reported the way
compare.py reports ours: each tensor's mean bitwidth over its elements, then the mean over
tensors (weights: the kernels of QConv2D/QDense; activations: every layer's input quantizer);
EBOPs after ``trace_minmax``.

    python benchmarks/hgq2_compare.py --tasks=breast_cancer --out=docs/hgq2_compare_mlp  # where hgq2 is installed
    python benchmarks/hgq2_compare.py --tasks=digits --betas=1e-7,1e-6,1e-5 --out=docs/hgq2_compare_digits
    python benchmarks/hgq2_compare.py --tasks=digits --betas=float --out=docs/hgq2_compare_digits_float
    python benchmarks/hgq2_compare.py --tasks=breast_cancer --betas=float,1e-5 --seeds=6 \
        --out=docs/hgq2_compare_mlp_6seeds
    python benchmarks/hgq2_compare.py --tasks=digits --betas=1e-8 --out=docs/hgq2_compare_digits_1e-8  # above 2.95 bits
    python benchmarks/hgq2_compare.py --tasks=digits --betas=3e-8 --out=docs/hgq2_compare_digits_3e-8
"""

from __future__ import annotations

import json
import os
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
os.environ.setdefault("KERAS_BACKEND", "tensorflow")

from absl import app, flags

flags.DEFINE_list("tasks", ["digits", "breast_cancer"], "compare.py's tasks: digits (CNN), breast_cancer (MLP).")
flags.DEFINE_integer("seeds", 3, "Seeds per β.")
flags.DEFINE_integer("first_seed", 0, "Seeds run are first_seed .. first_seed + seeds - 1.")
flags.DEFINE_list("betas", ["1e-6", "1e-5", "1e-4"], "HGQ2's β (the EBOPs weight in the loss), one run per value; "
                  "'float': the same network as plain Keras layers trained the same way (the control).")
flags.DEFINE_integer("epochs", 150, "Training epochs (from scratch).")
flags.DEFINE_string("out", os.path.join(ROOT, "docs", "hgq2_compare"), "Output prefix (.md, .json).")
FLAGS = flags.FLAGS


def _data(task):
    from benchmarks.common import breast_cancer
    from examples import data

    return data.load("digits") if task == "digits" else breast_cancer()


def _beta(text):
    """A --betas entry: a float, or None for the float control."""
    return None if text == "float" else float(text)


def _float_model(task, shape):
    """The same network as plain Keras 3 layers (no quantizers): compare.py's float model."""
    import keras

    from examples.models import cnn

    if task == "digits":
        return cnn(shape, 10, keras=keras)
    L = keras.layers
    return keras.Sequential([keras.Input(shape), L.Dense(64, activation="relu"), L.Dense(32, activation="relu"),
                             L.Dense(2, activation="softmax")])


def _model(task, shape, beta):
    import keras
    from hgq.config import LayerConfigScope, QuantizerConfigScope
    from hgq.layers import QBatchNormalization, QConv2D, QDense, QMaxPooling2D

    with QuantizerConfigScope(place=("weight", "bias"), default_q_type="kbi", b0=4, i0=0), \
            QuantizerConfigScope(place="datalane", default_q_type="kif", f0=4), \
            LayerConfigScope(enable_ebops=True, beta0=beta):
        if task == "digits":
            layers = [QConv2D(16, 3, padding="same"), QBatchNormalization(), keras.layers.ReLU(), QMaxPooling2D(2),
                      QConv2D(32, 3, padding="same", activation="relu"), keras.layers.Flatten(),
                      QDense(10, activation="softmax")]
        else:
            layers = [QDense(64, activation="relu"), QDense(32, activation="relu"), QDense(2, activation="softmax")]
        return keras.Sequential([keras.Input(shape), *layers])


def run(task, seed, beta):
    import keras
    import numpy as np
    from hgq.layers import QConv2D, QDense
    from hgq.utils import trace_minmax

    keras.utils.set_random_seed(seed)
    xtr, ytr, xte, yte = _data(task)
    model = _model(task, xtr.shape[1:], beta) if beta is not None else _float_model(task, xtr.shape[1:])
    steps = FLAGS.epochs * -(-len(xtr) // 32)
    model.compile(keras.optimizers.Adam(keras.optimizers.schedules.CosineDecay(3e-3, steps)),
                  keras.losses.SparseCategoricalCrossentropy(), metrics=["accuracy"])
    model.fit(xtr, ytr, epochs=FLAGS.epochs, batch_size=32, verbose=0)
    if beta is None:
        top1 = float(model.evaluate(xte, yte, verbose=0)[1])
        row = dict(task=task, seed=seed, beta=None, top1=top1, avg_bits=32.0, weight_bits=32.0,
                   activation_bits=32.0, ebops=float("nan"))
        print(row, flush=True)
        return row
    ebops = trace_minmax(model, xtr)
    weights = [float(np.mean(layer.kq.bits)) for layer in model.layers if isinstance(layer, (QConv2D, QDense))]
    acts = [float(np.mean(layer.iq.bits)) for layer in model.layers if getattr(layer, "enable_iq", False)]
    top1 = float(model.evaluate(xte, yte, verbose=0)[1])
    row = dict(task=task, seed=seed, beta=beta, top1=top1, avg_bits=float(np.mean(weights + acts)),
               weight_bits=float(np.mean(weights)), activation_bits=float(np.mean(acts)), ebops=float(ebops))
    print(row, flush=True)
    return row


def _write(made_by, rows):
    """The page and JSON of the runs so far (rewritten after each run, so a long run leaves a page)."""
    import numpy as np

    seeds = f"seeds {FLAGS.first_seed}-{FLAGS.first_seed + FLAGS.seeds - 1}"
    lines = [made_by, "", f"HGQ2, {FLAGS.epochs} epochs, {seeds}; bits per tensor averaged like "
             "benchmarks/compare.py's.", "",
             "| task | β | seeds | top-1 % | avg bits per tensor | weight bits | activation bits | EBOPs |",
             "|---|---|---|---|---|---|---|---|"]
    for task in FLAGS.tasks:
        for beta in FLAGS.betas:
            sel = [r for r in rows if r["task"] == task and r["beta"] == _beta(beta)]
            if not sel:
                continue
            mean = {k: float(np.mean([r[k] for r in sel])) for k in ("top1", "avg_bits", "weight_bits",
                                                                    "activation_bits", "ebops")}
            std = float(np.std([r["top1"] for r in sel]))
            lines.append(f"| {task} | {beta} | {len(sel)} | {100 * mean['top1']:.2f} ± {100 * std:.2f} | "
                         f"{mean['avg_bits']:.2f} | {mean['weight_bits']:.2f} | {mean['activation_bits']:.2f} | "
                         f"{mean['ebops']:,.0f} |")
    lines += ["", "Per seed:", "", "| task | β | seed | top-1 % | avg bits | weight bits | activation bits |",
              "|---|---|---|---|---|---|---|"]
    lines += [f"| {r['task']} | {'float' if r['beta'] is None else format(r['beta'], 'g')} | {r['seed']} | "
              f"{100 * r['top1']:.2f} | {r['avg_bits']:.2f} | {r['weight_bits']:.2f} | {r['activation_bits']:.2f} |"
              for r in rows]
    with open(FLAGS.out + ".json", "w") as f:
        json.dump(rows, f, indent=1)
    with open(FLAGS.out + ".md", "w") as f:
        f.write("\n".join(lines) + "\n")
    return lines


def main(argv):
    del argv
    from benchmarks.provenance import stamp

    made_by = stamp()
    rows = []
    for task in FLAGS.tasks:
        for beta in FLAGS.betas:
            for seed in range(FLAGS.first_seed, FLAGS.first_seed + FLAGS.seeds):
                rows.append(run(task, seed, _beta(beta)))
                lines = _write(made_by, rows)
    print("\n".join(lines))


if __name__ == "__main__":
    app.run(main)
