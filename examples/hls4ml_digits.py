"""From a float Keras model to an hls4ml project whose datapath widths are the learned bitlengths.

float training -> bit-pruning on power-of-two grids (``grid="pow2"``) -> freeze to an
average bit budget -> fine-tune -> ``export_hls4ml`` -> hls4ml's C++ emulation (g++),
checked against the Keras model on the test set -> the project, ready for the vendor
tools (``hls_model.build()``, not run here).

    python examples/hls4ml_digits.py                       # digits (offline), 3-bit budget
    python examples/hls4ml_digits.py --target_bits=4 --out_dir=/tmp/prj
    python examples/hls4ml_digits.py --epochs=1 --nocompile  # quick: export only

Needs hls4ml (``pip install '.[hls4ml]'``) and, for the emulation, g++.
"""

from __future__ import annotations

import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from absl import app, flags

flags.DEFINE_float("target_bits", 3.0, "Average bitlength per tensor to freeze at.")
flags.DEFINE_integer("epochs", 3, "Epochs of each phase (float, bit-pruning; fine-tuning gets as many).")
flags.DEFINE_integer("seed", 0, "Random seed.")
flags.DEFINE_string("out_dir", "hls4ml_digits", "The hls4ml project directory.")
flags.DEFINE_bool("compile", True, "Compile hls4ml's C++ emulation (g++) and compare it with Keras.")
FLAGS = flags.FLAGS


def run() -> dict:
    """The steps above with the flags' settings; returns the numbers it printed."""
    import numpy as np
    import tf_keras as keras

    import tf_bitpruning as tfbp
    from examples import data
    from examples.models import small_cnn

    keras.utils.set_random_seed(FLAGS.seed)
    xtr, ytr, xte, yte = data.load("digits")
    loss = keras.losses.SparseCategoricalCrossentropy()

    # 1. A float model, trained as usual.
    model = small_cnn()
    model.compile(keras.optimizers.Adam(3e-3), loss, metrics=["accuracy"])
    model.fit(xtr, ytr, epochs=FLAGS.epochs, batch_size=64, verbose=0)
    print(f"float top-1: {model.evaluate(xte, yte, verbose=0)[1]:.4f}")

    # 2. Learn the bitlengths on fixed-point (power-of-two) grids, then freeze them to the budget.
    bp = tfbp.bitprune_model(model, regularization=0.05, grid="pow2", weight_clip="mse", bits_lr_multiplier=20.0)
    bp.compile(keras.optimizers.Adam(1e-3), loss, metrics=["accuracy"])
    bp.fit(xtr, ytr, epochs=FLAGS.epochs, batch_size=64, verbose=0)
    frozen = tfbp.freeze_bitlengths(bp, target_bits=FLAGS.target_bits)
    frozen.compile(keras.optimizers.Adam(5e-4), loss, metrics=["accuracy"])
    frozen.fit(xtr, ytr, epochs=FLAGS.epochs, batch_size=64, verbose=0)
    top1 = frozen.evaluate(xte, yte, verbose=0)[1]
    print(f"bit-pruned top-1: {top1:.4f}, average bits {tfbp.average_bits(frozen):.2f}: {tfbp.bitlengths(frozen)}")

    # 3. The hls4ml project: every learned bitlength is a fixed<W,I>/ufixed<W,I> type.
    out = tfbp.export_hls4ml(frozen, FLAGS.out_dir)
    for name, types in out.precision.items():
        print(f"  {name}: {types}")
    print(f"not bit-exact: {out.inexact or 'none'}; precisions in {out.path}")
    result = {"top1": top1, "inexact": dict(out.inexact), "project": FLAGS.out_dir}

    # 4. hls4ml's C++ emulation computes what Keras computes (the softmax: lookup tables, within 0.01).
    if FLAGS.compile:
        out.hls_model.compile()
        x = xte.astype(np.float32)
        y_hls, y_keras = out.hls_model.predict(x), frozen.predict(x, verbose=0)
        result.update(max_diff=float(np.abs(y_hls - y_keras).max()),
                      top1_agree=float((y_hls.argmax(1) == y_keras.argmax(1)).mean()))
        print(f"hls4ml emulation vs Keras on {len(x)} test inputs: max |diff| {result['max_diff']:.4f}, "
              f"top-1 agreement {result['top1_agree']:.4f}")
    print(f"hls4ml project written to {FLAGS.out_dir} (hls_model.build() runs the vendor HLS tools)")
    return result


def main(argv) -> None:
    del argv
    print("result:", json.dumps(run(), sort_keys=True))


if __name__ == "__main__":
    app.run(main)
