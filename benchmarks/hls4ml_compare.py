"""Power-of-two grids, uniform fixed-point QAT and the default grid on the digits CNN at
a 3-bit budget, and the hls4ml check.

Per variant and seed: bit-prune ``examples.models.small_cnn`` (λ = 0.05, 3 epochs),
freeze to an average of at most ``--budget`` bits per tensor
(``freeze_bitlengths(target_bits=...)``), fine-tune 2 epochs; report top-1 on the
digits test split, the average weight and activation bitlengths, and bit-operations
(``Σ MACs · weight bits · input bits``, the hardware cost proxy of
``precision_report``). Variants:

- ``minmax``: the default grid (steps ``max|w| / (2^(b-1)-1)``; not fixed point);
- ``pow2``: ``grid="pow2"``, each weight step rounded up to a power of two;
- ``pow2-mse``: ``grid="pow2", weight_clip="mse"``: the power-of-two weight step of
  least squared error (rounded down and saturating where that is better);
- ``uniform``: uniform fixed-point QAT: every tensor at ``--budget`` bits from the
  start (``weight_bits = activation_bits = (budget, budget)``, λ = 0) on the
  ``pow2-mse`` grids, the same epochs;
- ``hgq2``: HGQ2 (``pip install hgq2``), per-element bitwidths learned against its
  EBOPs, the same CNN and epochs (:func:`run_hgq2`); its BOPs column is its EBOPs.

For the power-of-two variants (``--hls``): export with ``export_hls4ml``, compile
hls4ml's C++ emulation and count the test inputs whose emulated softmax is within
0.01 of Keras' and whose top-1 agrees (the logits are equal bit for bit:
``tests/test_hls4ml.py``).

    python benchmarks/hls4ml_compare.py                 # seeds 0 1 2, every variant, with the hls4ml check
    python benchmarks/hls4ml_compare.py --seeds=0 --variants=pow2,pow2-mse --nohls
"""

from __future__ import annotations

import os
import sys
import tempfile

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

from absl import app, flags

flags.DEFINE_list("seeds", ["0", "1", "2"], "random seeds")
flags.DEFINE_list("variants", ["minmax", "pow2", "pow2-mse", "uniform", "hgq2"],
                  "what to train (see the module doc; hgq2 needs `pip install hgq2`)")
flags.DEFINE_float("budget", 3.0, "average bits per tensor after freezing")
flags.DEFINE_string("out", os.path.join(ROOT, "docs", "hls4ml_compare.md"),
                    "Markdown file the table is written to (empty: print only).")
flags.DEFINE_bool("hls", True, "export the pow2 models to hls4ml and compare its C++ emulation")
FLAGS = flags.FLAGS


# variant -> (grid, weight_clip, uniform)
VARIANTS = {"minmax": ("minmax", "max", False), "pow2": ("pow2", "max", False),
            "pow2-mse": ("pow2", "mse", False), "uniform": ("pow2", "mse", True)}


def run(variant: str, seed: int, budget: float, hls: bool) -> dict:
    """One model: train, freeze, fine-tune; its numbers (and the hls4ml agreement)."""
    import numpy as np
    import tensorflow as tf
    import tf_keras as keras

    import tf_bitpruning as tfbp
    from examples import data
    from examples.models import small_cnn

    tf.config.experimental.enable_op_determinism()
    keras.backend.clear_session()
    keras.utils.set_random_seed(seed)
    xtr, ytr, xte, yte = data.load("digits")
    loss = keras.losses.SparseCategoricalCrossentropy()
    grid, clip, uniform = VARIANTS[variant]
    fixed = {"weight_bits": (int(budget),) * 2, "activation_bits": (int(budget),) * 2} if uniform else {}
    bp = tfbp.bitprune_model(small_cnn(), regularization=0.0 if uniform else 0.05, grid=grid, weight_clip=clip,
                             bits_lr_multiplier=20.0, **fixed)
    bp.compile(keras.optimizers.Adam(3e-3), loss, metrics=["accuracy"])
    bp.fit(xtr, ytr, epochs=3, batch_size=64, verbose=0)
    frozen = tfbp.freeze_bitlengths(bp, target_bits=budget)
    frozen.compile(keras.optimizers.Adam(5e-4), loss, metrics=["accuracy"])
    frozen.fit(xtr, ytr, epochs=2, batch_size=64, verbose=0)
    totals = tfbp.precision_report(frozen)["totals"]
    test_loss, top1 = frozen.evaluate(xte, yte, verbose=0)
    result = {"variant": variant, "grid": grid, "seed": seed, "top1": float(top1), "loss": float(test_loss),
              "avg_bits": totals["avg_bits"], "weight_bits": totals["avg_weight_bits"],
              "activation_bits": totals["avg_activation_bits"], "bops": totals["bops"]}
    if hls and grid == "pow2":
        with tempfile.TemporaryDirectory() as tmp:
            out = tfbp.export_hls4ml(frozen, os.path.join(tmp, "prj"))
            out.hls_model.compile()
            x = xte.astype(np.float32)
            y_hls = out.hls_model.predict(x)
        y_keras = frozen.predict(x, verbose=0)
        close = np.all(np.abs(y_hls - y_keras) <= 0.01, axis=1)
        result.update(hls_inexact=sorted(out.inexact), hls_softmax_close=float(close.mean()),
                      hls_top1_agree=float((y_hls.argmax(1) == y_keras.argmax(1)).mean()),
                      hls_softmax_maxdiff=float(np.abs(y_hls - y_keras).max()),
                      hls_top1=float((y_hls.argmax(1) == yte).mean()))
    return result


def run_hgq2(seed: int, budget: float) -> dict:
    """HGQ2 (``pip install hgq2``; Keras 3) on the same CNN and schedule: its layers
    (QConv2D, QMaxPool2D, QDense, ReLU and softmax as in ``small_cnn``) with per-element
    bitwidths learned against its EBOPs (β = 1e-5), weights started at ``budget`` bits
    (``kbi``, ``b0 = budget``, ``i0 = 0``), activations at 3 fraction bits (``kif``, integer
    bits from the traced range), Adam 3e-3 for 3 + 2 epochs. Reported: HGQ2's own
    per-element ``bits`` averaged per tensor, then over tensors (weights: kernels;
    activations: every layer's input quantizer), and its EBOPs after ``trace_minmax``."""
    import keras
    import numpy as np
    from hgq.config import LayerConfigScope, QuantizerConfigScope
    from hgq.layers import QConv2D, QDense, QMaxPool2D
    from hgq.utils import trace_minmax
    from hgq.utils.sugar import FreeEBOPs

    from examples import data

    keras.utils.set_random_seed(seed)
    xtr, ytr, xte, yte = data.load("digits")
    with QuantizerConfigScope(place=("weight", "bias"), default_q_type="kbi", b0=int(budget), i0=0), \
            QuantizerConfigScope(place="datalane", default_q_type="kif", f0=3), \
            LayerConfigScope(enable_ebops=True, beta0=1e-5):
        model = keras.Sequential([keras.Input((8, 8, 1)), QConv2D(16, 3, padding="same", activation="relu"),
                                  QMaxPool2D(2), QConv2D(32, 3, padding="same", activation="relu"),
                                  keras.layers.Flatten(), QDense(10, activation="softmax")])
    model.compile(keras.optimizers.Adam(3e-3), keras.losses.SparseCategoricalCrossentropy(), metrics=["accuracy"])
    model.fit(xtr, ytr, epochs=5, batch_size=64, verbose=0, callbacks=[FreeEBOPs()])
    ebops = trace_minmax(model, xtr)
    weights = [float(np.mean(layer.kq.bits)) for layer in model.layers if hasattr(layer, "kq")]
    acts = [float(np.mean(layer.iq.bits)) for layer in model.layers if getattr(layer, "enable_iq", False)]
    test_loss, top1 = model.evaluate(xte, yte, verbose=0)
    return {"variant": "hgq2", "grid": "hgq2", "seed": seed, "top1": float(top1), "loss": float(test_loss),
            "avg_bits": float(np.mean(weights + acts)), "weight_bits": float(np.mean(weights)),
            "activation_bits": float(np.mean(acts)), "bops": float(ebops)}


def main(argv):
    del argv
    import numpy as np

    from benchmarks.provenance import stamp

    if "hgq2" in FLAGS.variants:  # fail now, not after the other variants have trained
        try:
            import hgq  # noqa: F401
        except ImportError as e:
            raise SystemExit(f"the hgq2 variant needs HGQ2 (pip install hgq2; it needs Keras >= 3.15), or leave it "
                             f"out: --variants=minmax,pow2,pow2-mse,uniform ({e})")
    made_by = stamp()  # at the start: the code that runs is the code at this commit
    rows = [run(v, int(seed), FLAGS.budget, FLAGS.hls) for v in FLAGS.variants if v != "hgq2"
            for seed in FLAGS.seeds]
    if "hgq2" in FLAGS.variants:  # last: it imports Keras 3 layers of its own
        rows += [run_hgq2(int(seed), FLAGS.budget) for seed in FLAGS.seeds]
    lines = [f"digits small_cnn, frozen at or under {FLAGS.budget:g} bits per tensor, seeds "
             f"{', '.join(FLAGS.seeds)}; BOPs: Σ MACs × weight bits × input bits.", "",
             "| variant | seed | top-1 | test loss | avg bits | weight bits | activation bits | BOPs | hls4ml top-1 agree | "
             "hls4ml softmax max diff |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        agree = f"{r['hls_top1_agree']:.4f}" if "hls_top1_agree" in r else "-"
        diff = f"{r['hls_softmax_maxdiff']:.4f}" if "hls_softmax_maxdiff" in r else "-"
        lines.append(f"| {r['variant']} | {r['seed']} | {r['top1']:.4f} | {r['loss']:.4f} | {r['avg_bits']:.2f} | "
                     f"{r['weight_bits']:.2f} | {r['activation_bits']:.2f} | {r['bops']:,.0f} | {agree} | {diff} |")
    lines.append("")
    for variant in FLAGS.variants:
        chosen = [r for r in rows if r["variant"] == variant]
        lines.append(f"- mean {variant}: top-1 {np.mean([r['top1'] for r in chosen]):.4f}, avg bits "
                     f"{np.mean([r['avg_bits'] for r in chosen]):.2f}, BOPs "
                     f"{np.mean([r['bops'] for r in chosen]):,.0f}")
    for r in rows:
        if "hls_inexact" in r:
            lines.append(f"- {r['variant']} seed {r['seed']}: hls4ml inexact layers {r['hls_inexact']}")
    text = "\n".join(lines) + "\n"
    print(text)
    if FLAGS.out:
        with open(FLAGS.out, "w") as f:
            f.write(f"# hls4ml: power-of-two grids, uniform fixed-point QAT and the default grid\n\n{made_by}\n\n{text}")
        print(f"wrote {FLAGS.out}")


if __name__ == "__main__":
    app.run(main)
