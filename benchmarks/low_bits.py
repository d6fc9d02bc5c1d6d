"""The ``keras.applications`` families at a low budget, against float trained as long.

Per family (the coverage benchmark's networks, data and schedule, ``applications.py``):
a float model trained for the learning and fine-tuning steps together, at the same
learning rates; and ``bitprune_model -> fit(BitBudget(--target_bits)) ->
freeze_bitlengths(target_bits) -> fit -> export_tflite`` from the same initial weights.
Reported: float and deployed (the ``.tflite`` in LiteRT) test top-1, the drop in points,
the deployed average bits, and the share of test inputs on which file and Keras model
pick the same class.

    python benchmarks/low_bits.py --families=MobileNetV2,ResNet50V2 --target_bits=4
    python benchmarks/low_bits.py --families=MobileNet --activation_range=learned
    python benchmarks/low_bits.py --families=EfficientNetB0 --activation_range=learned --init_bits=5
    python benchmarks/low_bits.py --families=EfficientNetB0 --start=float --allocate   # a trained network
    python benchmarks/low_bits.py --families=           # rewrite the page from the json

Rows merge into ``--out``.json (default ``docs/applications_4bit``); each family runs in
its own process.
"""

from __future__ import annotations

import json
import os
import sys
import tempfile
import time
import traceback

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from absl import app, flags

from benchmarks import applications as apps
from benchmarks import low_bits_page as page
from benchmarks.common import accuracy, digits, export_learned_first, print_row, row_in_subprocess, save_page

FLAGS = flags.FLAGS
flags.DEFINE_enum("weight_clip", "max", ["max", "mse", "learned"], "bitprune_model(weight_clip=...).")
flags.DEFINE_float("init_bits", None, "bitprune_model(init_bits=...): the bitlength every tensor starts "
                   "at; default the top of its range (8). Near the budget, BitBudget (at most ~0.008 bit "
                   "per step at learning rate 1e-3) needs far fewer steps to get there.")
flags.DEFINE_enum("start", "init", ["init", "float"], "Where bit pruning starts: the float run's initial "
                  "weights (init: both train from scratch) or its trained weights (float: the user's workflow, "
                  "quantizing a trained network; the bit-pruning run then gets as many steps again).")
flags.DEFINE_bool("allocate", False, "allocate_bitlengths(target_bits, 128 training inputs) before the learning "
                  "phase: start at the budget with the bits spent where the outputs change most.")
flags.DEFINE_float("lr_factor", 1.0, "The bit-pruning run trains at this multiple of the family's learning "
                   "rate (the fine-tuning steps at a fifth of that). A trained network (--start=float) is "
                   "quantized at a smaller rate than it was trained at, e.g. 0.2.")
flags.DEFINE_float("within", 3.0, "The claim: deployed within this many points of float.")
DEFAULT_OUT = os.path.join(ROOT, "docs", "applications_4bit")


def run_one(name: str) -> dict:
    import tf_bitpruning as tfbp
    from tests.support.litert_run import run_tflite

    keras = apps.K()
    size, _, raw = {**apps.FAMILIES, **apps.EXTRA}[name]
    xtr, ytr, xte, yte = digits(size, raw)
    steps, finetune_steps, lr = apps.recipe(name)
    row = {"family": name, "input": size, "commit": apps.commit(),
           "keras": f"{'keras3' if FLAGS.keras == '3' else 'tf_keras'} {keras.__version__}",
           "target_bits": FLAGS.target_bits, "activation_range": FLAGS.activation_range,
           "weight_clip": FLAGS.weight_clip, "init_bits": FLAGS.init_bits, "start": FLAGS.start,
           "allocate": FLAGS.allocate, "lr_factor": FLAGS.lr_factor, "steps": steps, "finetune_steps": finetune_steps,
           "learning_rate": lr}
    stage = "float"
    try:
        keras.utils.set_random_seed(0)
        model = apps.build(name)
        start = model.get_weights()
        apps.fit_float(model, lr, steps, finetune_steps, xtr, ytr)
        row["float_accuracy"] = accuracy(model, xte, yte)

        stage = "fit(BitBudget)"
        keras.backend.clear_session()
        keras.utils.set_random_seed(0)
        trained = model.get_weights()
        model = apps.build(name)
        model.set_weights(start if FLAGS.start == "init" else trained)
        bp = tfbp.bitprune_model(model, regularization=0.01, activation_range=FLAGS.activation_range,
                                 weight_clip=FLAGS.weight_clip, init_bits=FLAGS.init_bits)
        if FLAGS.allocate:
            stage = "allocate_bitlengths"
            tfbp.allocate_bitlengths(bp, FLAGS.target_bits, xtr[:128])
            row["allocated_accuracy"] = accuracy(bp, xte, yte)
            stage = "fit(BitBudget)"
        lr *= FLAGS.lr_factor
        apps.fit_steps(bp, lr, steps, xtr, ytr, [tfbp.BitBudget(FLAGS.target_bits)])
        row["learning_accuracy"] = accuracy(bp, xte, yte)
        row["learned_bits"] = round(tfbp.average_bits(bp), 2)
        stage = "freeze_bitlengths"
        frozen = tfbp.freeze_bitlengths(bp, target_bits=FLAGS.target_bits)
        row["frozen_accuracy"] = accuracy(frozen, xte, yte)
        stage = "fit (fine-tune)"
        apps.fit_steps(frozen, lr / 5, finetune_steps, xtr, ytr)
        row["avg_bits"] = round(tfbp.average_bits(frozen), 2)
        stage = "export_tflite"
        with tempfile.TemporaryDirectory() as workdir:
            path = os.path.join(workdir, "model.tflite")
            export_learned_first(frozen, path, xtr[:64])
            stage = "LiteRT"
            got = run_tflite(path, xte)
        row["accuracy"] = accuracy(frozen, xte, yte)  # aligned by the export: the model in hand
        row["tflite_accuracy"] = round(float((got.argmax(1) == yte).mean()), 4)
        row["same_class"] = round(float((got.argmax(1) == frozen.predict(xte, verbose=0, batch_size=64)
                                          .argmax(1)).mean()), 4)
        row["drop"] = round(100 * (row["float_accuracy"] - row["tflite_accuracy"]), 1)
        row["ours"] = "yes"
        if FLAGS.start == "float":
            # What the extra steps alone do: the float model trained as the bit-pruned one was.
            stage = "float, as long again"
            keras.backend.clear_session()
            again = apps.build(name)
            again.set_weights(trained)
            apps.fit_float(again, lr, steps, finetune_steps, xtr, ytr)
            row["float_again_accuracy"] = accuracy(again, xte, yte)
    except Exception as e:  # noqa: BLE001 (reported)
        row.update(ours="no", ours_stage=stage, ours_error=f"{type(e).__name__}: {e}"[:400])
        traceback.print_exc()
    return row


def row_key(name: str, row: dict) -> str:
    return page.row_key(name, row, FLAGS.keras, FLAGS.target_bits, FLAGS.activation_range, FLAGS.weight_clip,
                        FLAGS.init_bits, FLAGS.start, FLAGS.allocate, FLAGS.lr_factor)


def table(results: dict, made_by: str) -> str:
    return page.table(results, made_by, list(apps.FAMILIES), FLAGS.within,
                      f"{os.path.basename(FLAGS.out or DEFAULT_OUT)}.json", FLAGS.batch_size, FLAGS.target_bits)


def main(argv):
    del argv
    FLAGS.out = FLAGS.out or DEFAULT_OUT
    if FLAGS.one:
        print_row(run_one(FLAGS.one))
        return
    from benchmarks.provenance import stamp

    made_by = stamp()
    path = FLAGS.out + ".json"
    results = json.load(open(path)) if os.path.exists(path) else {}
    passed = [a for a in sys.argv[1:] if not a.startswith(("--families", "--one"))]
    for name in FLAGS.families:
        t0 = time.time()
        row, stderr = row_in_subprocess(os.path.abspath(__file__), name, passed)
        if row is None:
            row = {"family": name, "ours": "no", "ours_stage": "crash", "ours_error": stderr[-400:]}
            print(stderr[-3000:], flush=True)
        row["seconds"] = round(time.time() - t0)
        key = row_key(name, row)
        results[key] = row
        print(f"{key}: {json.dumps(row)}", flush=True)
        save_page(FLAGS.out, results, table(results, made_by))
    with open(FLAGS.out + ".md", "w") as f:
        f.write(table(results, made_by))
    print(table(results, made_by))


if __name__ == "__main__":
    flags.FLAGS.set_default("target_bits", 4.0)
    app.run(main)
