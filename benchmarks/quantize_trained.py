"""Ways to quantize a trained ``keras.applications`` family to a low budget, side by side.

The family is trained in float (``applications.py``'s schedule, or ``--steps``/``--finetune_steps``),
then quantized from those weights by one ``--mode``, printing test top-1 of the Keras model:

- ``fixed``: every tensor held at ``--bits`` (``weight_bits=activation_bits=(b, b)``), ``--qsteps`` at ``--qlr``;
- ``budget``: ``BitBudget(--bits)`` from 8 bits for ``--qsteps`` at ``--qlr``, frozen at the budget,
  ``--qft`` more at a fifth of the rate;
- ``allocate``: the same after ``allocate_bitlengths(--bits)``;
- ``greedy``: ``freeze_bitlengths(target_bits=--bits, calibration_data=...)`` at once (ranges calibrated
  by one epoch at rate 0), then ``--qsteps`` at ``--qlr`` and ``--qft`` at a fifth of it.

    python benchmarks/quantize_trained.py --family=EfficientNetB0 --steps=712 --finetune_steps=178 --mode=allocate
"""

from __future__ import annotations

import os
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from absl import app, flags

from benchmarks import applications as apps
from benchmarks.common import accuracy

FLAGS = flags.FLAGS
flags.DEFINE_string("family", "EfficientNetB0", "The keras.applications family.")
flags.DEFINE_enum("mode", "allocate", ["fixed", "budget", "allocate", "greedy"], "How to quantize (above).")
flags.DEFINE_integer("bits", 4, "The budget (uniform average bits).")
flags.DEFINE_enum("range", "ema", ["ema", "expand", "learned"], "bitprune_model(activation_range=...).")
flags.DEFINE_integer("qsteps", 356, "Steps of the quantized model (learning phase).")
flags.DEFINE_integer("qft", 178, "Fine-tuning steps at frozen bitlengths, at a fifth of --qlr.")
flags.DEFINE_float("qlr", 2e-4, "Adam's rate for the quantized model.")


def main(argv):
    del argv
    import tf_bitpruning as tfbp

    model, (xtr, ytr, xte, yte), _ = apps.trained_float(FLAGS.family)
    print(f"float {accuracy(model, xte, yte):.4f}", flush=True)
    t0, b = time.time(), FLAGS.bits

    def report(what, m):
        print(f"{what} {accuracy(m, xte, yte):.4f} at {tfbp.average_bits(m):.2f} bits ({time.time() - t0:.0f} s)",
              flush=True)

    if FLAGS.mode == "fixed":
        bp = tfbp.bitprune_model(model, regularization=0.0, weight_bits=(b, b), activation_bits=(b, b),
                                 activation_range=FLAGS.range)
        apps.fit_steps(bp, FLAGS.qlr, FLAGS.qsteps, xtr, ytr)
        report("fixed", bp)
        return
    bp = tfbp.bitprune_model(model, regularization=0.01, activation_range=FLAGS.range)
    if FLAGS.mode == "greedy":
        apps.fit_steps(bp, 0.0, 89, xtr, ytr)  # one epoch of digits at rate 0: calibrates the ranges
        frozen = tfbp.freeze_bitlengths(bp, target_bits=b, calibration_data=xtr[:128])
        report("greedy frozen", frozen)
        apps.fit_steps(frozen, FLAGS.qlr, FLAGS.qsteps, xtr, ytr)
        report("trained", frozen)
    else:
        if FLAGS.mode == "allocate":
            tfbp.allocate_bitlengths(bp, b, xtr[:128])
            report("allocated", bp)
        apps.fit_steps(bp, FLAGS.qlr, FLAGS.qsteps, xtr, ytr, [tfbp.BitBudget(b)])
        report("learning phase", bp)
        frozen = tfbp.freeze_bitlengths(bp, target_bits=b)
        report("frozen", frozen)
    if FLAGS.qft:
        apps.fit_steps(frozen, FLAGS.qlr / 5, FLAGS.qft, xtr, ytr)
        report("fine-tuned", frozen)


if __name__ == "__main__":
    app.run(main)
