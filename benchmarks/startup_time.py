"""Time to the first training step of MobileNetV2 vs tfmot 8-bit QAT, and the steady step.

As a new user would: ``keras.applications.MobileNetV2(alpha=0.35, input_shape=(96, 96, 3),
weights=None)`` (tf_keras), then ``tfbp.bitprune_model`` / tfmot's ``quantize_model`` /
nothing (float), ``compile`` with Adam and one ``train_on_batch`` of a fixed batch of 32.
Time to first step is wrapping + compile + the first step (tracing the train function
twice, as tf.function does when the optimizer creates its slots in the first call, and
running it once). Each variant is timed in a fresh process (nothing traced before),
``--rounds`` times in a shuffled order so that load from other processes hits them alike;
then one process builds the three models and times their steady steps interleaved, as
``benchmarks/step_time.py`` does. Ratios are medians of per-round ratios, in wall-clock
and in CPU time (steadier when other processes share the cores). Target: bit pruning's
time to first step <= 1.5 x tfmot's, its steady step no slower than before.

    python benchmarks/startup_time.py                   # writes docs/startup_time.md
    python benchmarks/startup_time.py --rounds=1 --repeats=3 --out=
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from absl import app, flags

flags.DEFINE_integer("batch", 32, "Batch size of the fixed training batch.")
flags.DEFINE_integer("size", 96, "Input height and width.")
flags.DEFINE_float("alpha", 0.35, "MobileNetV2 width multiplier.")
flags.DEFINE_enum("family", "MobileNetV2", ["MobileNetV2", "DenseNet121"], "The keras.applications network "
                  "(tfmot refuses DenseNet121: its times are compared with float only).")
flags.DEFINE_integer("rounds", 3, "Fresh-process time-to-first-step measurements per variant.")
flags.DEFINE_integer("steps", 3, "Timed steady train steps per repeat.")
flags.DEFINE_integer("repeats", 7, "Timed steady repeats per variant (median).")
flags.DEFINE_integer("warmup", 2, "Untimed steady steps per variant before timing.")
flags.DEFINE_string("child", "", "Internal: time one variant's first step in this process and print JSON.")
flags.DEFINE_string("out", None, "Markdown file the table is written to (empty: print only); default "
                    "docs/startup_time.md, docs/startup_time_densenet121.md for --family=DenseNet121.")
FLAGS = flags.FLAGS

VARIANTS = ("float", "tfmot_qat_8bit", "bitprune")
LABELS = {"float": "float", "tfmot_qat_8bit": "tfmot 8-bit QAT (`quantize_model`)",
          "bitprune": "bit pruning (`bitprune_model`)"}


def batch():
    import numpy as np
    rng = np.random.default_rng(0)
    x = rng.normal(size=(FLAGS.batch, FLAGS.size, FLAGS.size, 3)).astype("float32")
    return x, rng.integers(0, 10, size=FLAGS.batch)


def base_model():
    import tf_keras as keras
    keras.utils.set_random_seed(0)
    shape = (FLAGS.size, FLAGS.size, 3)
    if FLAGS.family == "DenseNet121":
        return keras.applications.DenseNet121(input_shape=shape, weights=None, classes=10)
    return keras.applications.MobileNetV2(input_shape=shape, alpha=FLAGS.alpha, weights=None, classes=10)


def wrap(name, model):
    """The variant ``name`` of ``model``, compiled."""
    import tensorflow_model_optimization as tfmot
    import tf_keras as keras

    import tf_bitpruning as tfbp
    if name == "tfmot_qat_8bit":
        model = tfmot.quantization.keras.quantize_model(model)
    elif name == "bitprune":
        model = tfbp.bitprune_model(model)
    model.compile(keras.optimizers.Adam(1e-3), "sparse_categorical_crossentropy", metrics=["accuracy"])
    return model


def first_step(name):
    """``{"wall": s, "cpu": s, "ops": n}`` from the model's wrapping to the end of its first step."""
    x, y = batch()
    model = base_model()
    start, start_cpu = time.perf_counter(), time.process_time()
    try:
        model = wrap(name, model)
    except Exception as e:  # tfmot refuses the model: the row says so
        return {"error": f"{type(e).__name__}: {str(e).splitlines()[0][:160]}"}
    model.train_on_batch(x, y)
    wall, cpu = time.perf_counter() - start, time.process_time() - start_cpu
    ops = sum(len(f.graph.get_operations()) for f in model.train_function._list_all_concrete_functions())
    return {"wall": wall, "cpu": cpu, "ops": ops}


def steady_steps(names):
    """name -> ({"wall": [...], "cpu": [...]}): per-step times of ``names``, interleaved."""
    import numpy as np
    import tensorflow as tf
    x, y = batch()
    iterator = iter(tf.data.Dataset.from_tensors((x, y)).repeat())
    steps = {}
    for name in names:
        step = wrap(name, base_model()).make_train_function()
        for _ in range(FLAGS.warmup):
            step(iterator)
        steps[name] = step
    times = {name: {"wall": [], "cpu": []} for name in names}
    order = list(names)
    rng = np.random.default_rng(0)
    for _ in range(FLAGS.repeats):
        rng.shuffle(order)
        for name in order:
            out = None
            start, start_cpu = time.perf_counter(), time.process_time()
            for _ in range(FLAGS.steps):
                out = steps[name](iterator)
            float(out["loss"])
            times[name]["wall"].append((time.perf_counter() - start) / FLAGS.steps)
            times[name]["cpu"].append((time.process_time() - start_cpu) / FLAGS.steps)
    return times


def paired_ratio(a, b):
    """Median over rounds of ``a[i] / b[i]``."""
    import numpy as np
    return float(np.median(np.asarray(a) / np.asarray(b)))


def main(argv):
    del argv
    import numpy as np

    if FLAGS.child:
        print("RESULT " + json.dumps(first_step(FLAGS.child)), flush=True)
        return

    from benchmarks.provenance import stamp
    made_by = stamp()
    out_path = FLAGS.out
    if out_path is None:
        suffix = "" if FLAGS.family == "MobileNetV2" else "_" + FLAGS.family.lower()
        out_path = os.path.join(ROOT, "docs", f"startup_time{suffix}.md")

    first = {name: [] for name in VARIANTS}
    order = list(VARIANTS)
    rng = np.random.default_rng(0)
    for _ in range(FLAGS.rounds):
        rng.shuffle(order)
        for name in order:
            args = [sys.executable, os.path.abspath(__file__), f"--child={name}", f"--batch={FLAGS.batch}",
                    f"--size={FLAGS.size}", f"--alpha={FLAGS.alpha}", f"--family={FLAGS.family}"]
            out = subprocess.run(args, capture_output=True, text=True, check=True, cwd=ROOT).stdout
            first[name].append(json.loads(out.split("RESULT ", 1)[1]))
            print(f"  first step {name}: {first[name][-1]}", flush=True)
    refused = {name: first[name][0]["error"] for name in VARIANTS if "error" in first[name][0]}
    timed = [name for name in VARIANTS if name not in refused]
    steady = steady_steps(timed)

    network = f"MobileNetV2(alpha={FLAGS.alpha:g}" if FLAGS.family == "MobileNetV2" else f"{FLAGS.family}("
    title = (f"{network}, {FLAGS.size}x{FLAGS.size}, weights=None), tf_keras, Adam, "
             f"batch {FLAGS.batch}; first step: {FLAGS.rounds} fresh process(es) per variant; steady step: "
             f"{FLAGS.steps} steps x {FLAGS.repeats} repeats (median)")
    print(title)
    rows, verdicts = [], []
    for name in timed:
        row = {"ops": first[name][0]["ops"]}
        for clock in ("wall", "cpu"):
            row[f"first_{clock}"] = float(np.median([r[clock] for r in first[name]]))
            row[f"step_{clock}"] = float(np.median(steady[name][clock]))
            for base, tag in (("tfmot_qat_8bit", "x"), ("float", "xf")):
                if base in refused:
                    row[f"first_{clock}_{tag}"] = row[f"step_{clock}_{tag}"] = None
                    continue
                row[f"first_{clock}_{tag}"] = paired_ratio([r[clock] for r in first[name]],
                                                           [r[clock] for r in first[base]])
                row[f"step_{clock}_{tag}"] = paired_ratio(steady[name][clock], steady[base][clock])
        rows.append((name, row))
        print(f"{name:<16} first step {row['first_wall']:6.1f} s wall, {row['first_cpu']:6.1f} s CPU; steady "
              f"{row['step_wall'] * 1e3:7.1f} ms wall, {row['step_cpu'] * 1e3:7.1f} ms CPU; {row['ops']} ops traced")
    bp = dict(rows)["bitprune"]
    for clock, label in (("wall", "wall-clock"), ("cpu", "CPU")):
        if bp[f"first_{clock}_x"] is None:
            verdicts.append(f"time to first step, bit pruning / float ({label}) = {bp[f'first_{clock}_xf']:.2f}; "
                            f"steady step = {bp[f'step_{clock}_xf']:.2f} x float (tfmot refuses this network)")
            continue
        ratio = bp[f"first_{clock}_x"]
        verdicts.append(f"time to first step, bit pruning / tfmot ({label}) = {ratio:.2f} "
                        f"(target <= 1.50: {'met' if ratio <= 1.5 else 'NOT met'}); steady step "
                        f"= {bp[f'step_{clock}_x']:.2f} x tfmot")
    verdicts += [f"tfmot's `quantize_model` refuses this network: {why}" for name, why in refused.items()]
    print("\n".join(verdicts))
    if out_path:
        with open(out_path, "w") as f:
            f.write(markdown(made_by, title, rows, verdicts))
        print(f"wrote {out_path}")


def _x(value) -> str:
    return "–" if value is None else f"{value:.2f}"


def markdown(made_by, title, rows, verdicts) -> str:
    """The page: provenance, what was timed, the table."""
    lines = ["| variant | first step, s (wall) | × tfmot (wall) | × float (wall) | first step, s (CPU) "
             "| × tfmot (CPU) | × float (CPU) | steady ms/step (wall) | × tfmot (wall) | steady ms/step (CPU) "
             "| × tfmot (CPU) | ops in the traced train functions |", "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for name, r in rows:
        lines.append(f"| {LABELS[name]} | {r['first_wall']:.1f} | {_x(r['first_wall_x'])} | {_x(r['first_wall_xf'])} "
                     f"| {r['first_cpu']:.1f} | {_x(r['first_cpu_x'])} | {_x(r['first_cpu_xf'])} "
                     f"| {r['step_wall'] * 1e3:.1f} | {_x(r['step_wall_x'])} "
                     f"| {r['step_cpu'] * 1e3:.1f} | {_x(r['step_cpu_x'])} | {r['ops']} |")
    return (f"# Time to the first training step\n\n{made_by}\n\n"
            "What a new user waits for before training starts: from `bitprune_model` (or tfmot's "
            "`quantize_model`, or nothing for float) through `compile` to the end of the first "
            "`train_on_batch`: wrapping, tracing the train function (twice: tf.function retraces after "
            "the optimizer creates its slots in the first call) and running it once. Each first step is "
            "timed in a fresh process, the variants in a shuffled order per round; the steady step is "
            "timed afterwards in one process, interleaved. Ratios are medians of per-round ratios. "
            "One run on a shared machine: compare ratios, not seconds.\n\n"
            "Each quantizer's math (both integer grids, the blend, its straight-through gradient, the "
            "bitlength's reparametrization, the tracked range's update) is one shared `tf.function` per "
            "quantizer configuration, so that a quantized tensor adds a few call ops to the traced step "
            "instead of about a hundred; the runtime inlines the calls before optimizing the step, which "
            "runs the same operations (same numbers). What remains above tfmot is mostly the optimizer: "
            "Adam traces about 40 ops per trainable variable, and bit pruning adds one trainable "
            "bitlength per quantized tensor. The ops column counts the two traced concrete train "
            "functions together.\n\n"
            f"{title}.\n\n" + "\n".join(lines) + "\n\n" + "".join(f"- {v}\n" for v in verdicts))


if __name__ == "__main__":
    app.run(main)
