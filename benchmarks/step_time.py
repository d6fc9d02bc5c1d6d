"""Train step time of the frozen phase vs tfmot 8-bit QAT, the learning phase and float.

The digits CNN of the tests, one fixed batch, the compiled Keras train step called
directly (no ``fit`` bookkeeping). Each variant is warmed up, then timed for
``--steps`` steps, ``--repeats`` times, interleaving the variants so that load from
other processes hits them alike; the median per-step time of the repeats is
reported, and ratios from this one run, both in wall-clock time and in this
process's CPU time (steadier when other processes share the cores). Target:
frozen <= 1.1 x tfmot QAT.

    python benchmarks/step_time.py                     # writes docs/step_time.md
    python benchmarks/step_time.py --batch=256 --threads=0 --out=/tmp/step_time.md
    python benchmarks/step_time.py --levers --out=docs/step_time_levers.md   # + the accuracy levers
"""

from __future__ import annotations

import os
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from absl import app, flags

flags.DEFINE_integer("batch", 64, "Batch size of the fixed training batch.")
flags.DEFINE_integer("steps", 20, "Timed train steps per repeat.")
flags.DEFINE_integer("repeats", 41, "Timed repeats per variant (the median is reported).")
flags.DEFINE_integer("warmup", 20, "Untimed steps per variant before timing.")
flags.DEFINE_float("frozen_bits", 4.0, "Bitlength every tensor is frozen at.")
flags.DEFINE_integer("threads", 1, "TF intra- and inter-op threads (0: TF's default, all cores). One thread "
                     "makes the ratios steadier on a shared machine.")
flags.DEFINE_bool("levers", False, "Also time the learning phase with each accuracy lever (docs/accuracy.md): "
                  "activation_range='learned', weight_clip='learned', both, and tfbp.Distill.")
flags.DEFINE_string("out", os.path.join(ROOT, "docs", "step_time.md"), "Markdown file the table is written to "
                    "(empty: print only).")
FLAGS = flags.FLAGS


def build_variants(x, y):
    """name -> compiled model, all from the same float weights."""
    import tensorflow_model_optimization as tfmot
    import tf_keras as keras

    import tf_bitpruning as tfbp
    from examples.models import small_cnn
    from tf_bitpruning import costs

    def compiled(model):
        model.compile(keras.optimizers.Adam(1e-3), "sparse_categorical_crossentropy", metrics=["accuracy"])
        return model

    keras.utils.set_random_seed(0)
    base = small_cnn()
    variants = {"float": compiled(base)}
    variants["tfmot_qat_8bit"] = compiled(tfmot.quantization.keras.quantize_model(small_cnn()))
    learning = compiled(tfbp.bitprune_model(small_cnn()))
    learning.train_on_batch(x, y)  # calibrates the activation ranges
    variants["learning"] = learning

    def set_bits(model):
        for t in costs.quantized_tensors(model):
            bits = max(min(FLAGS.frozen_bits, t.quantizer.max_bits), t.quantizer.min_bits)
            t.bits_variable.assign(bits / t.quantizer.bits_lr_multiplier)

    set_bits(learning)
    variants["frozen"] = compiled(tfbp.freeze_bitlengths(learning))
    if FLAGS.levers:
        for name, options in LEVER_OPTIONS.items():
            model = compiled(tfbp.bitprune_model(small_cnn(), **options))
            model.train_on_batch(x, y)
            set_bits(model)
            variants[name] = model
        distilled = compiled(tfbp.bitprune_model(small_cnn()))
        distilled.train_on_batch(x, y)
        set_bits(distilled)
        distill = tfbp.Distill(base)
        distill.set_model(distilled)
        distill.on_train_begin()  # its loss, in the train function make_train_function returns
        variants["learning_distill"] = distilled
    return variants


LEVER_OPTIONS = {"learning_range": dict(activation_range="learned"), "learning_clip": dict(weight_clip="learned"),
                 "learning_range_clip": dict(activation_range="learned", weight_clip="learned")}


def main(argv):
    del argv
    import numpy as np
    import tensorflow as tf

    from benchmarks.provenance import stamp
    from examples import data

    made_by = stamp()  # the code that runs is the code at this commit

    if FLAGS.threads:
        tf.config.threading.set_intra_op_parallelism_threads(FLAGS.threads)
        tf.config.threading.set_inter_op_parallelism_threads(FLAGS.threads)

    xtr, ytr, _, _ = data.load("digits")
    x, y = xtr[:FLAGS.batch], ytr[:FLAGS.batch]
    variants = build_variants(x, y)
    iterator = iter(tf.data.Dataset.from_tensors((x, y)).repeat())
    steps = {}
    for name, model in variants.items():
        step = model.make_train_function()
        for _ in range(FLAGS.warmup):
            step(iterator)
        steps[name] = step

    wall = {name: [] for name in variants}
    cpu = {name: [] for name in variants}
    order = list(steps)
    rng = np.random.default_rng(0)
    for _ in range(FLAGS.repeats):
        rng.shuffle(order)  # no variant always runs right after another
        for name in order:
            step, out = steps[name], None
            start, start_cpu = time.perf_counter(), time.process_time()
            for _ in range(FLAGS.steps):
                out = step(iterator)
            float(out["loss"])  # wait for the last step
            wall[name].append((time.perf_counter() - start) / FLAGS.steps)
            cpu[name].append((time.process_time() - start_cpu) / FLAGS.steps)

    title = (f"digits CNN, batch {FLAGS.batch}, {FLAGS.steps} steps x {FLAGS.repeats} repeats (median), "
             f"{FLAGS.threads or 'default'} TF thread(s), "
             f"devices {[d.device_type for d in tf.config.list_logical_devices()]}")
    print(title)
    medians = {label: {name: float(np.median(t)) for name, t in times.items()}
               for label, times in (("wall", wall), ("CPU", cpu))}
    ratios = {}
    for label, times in (("wall", wall), ("CPU", cpu)):
        median = medians[label]
        qat, flt = median["tfmot_qat_8bit"], median["float"]
        print(f"{'variant':<16}{label + ' ms/step':>16}{'x tfmot QAT':>14}{'x float':>10}")
        for name in variants:
            print(f"{name:<16}{median[name] * 1e3:>16.3f}{median[name] / qat:>14.2f}{median[name] / flt:>10.2f}")
        # Paired: the ratio within each repeat, then the median over repeats.
        ratios[label] = float(np.median(np.array(times["frozen"]) / np.array(times["tfmot_qat_8bit"])))
    verdicts = [f"frozen / tfmot QAT ({label} time, median of per-repeat ratios) = {ratio:.2f} "
                f"(target <= 1.10: {'met' if ratio <= 1.10 else 'NOT met'})" for label, ratio in ratios.items()]
    print("\n".join(verdicts))
    if FLAGS.out:
        with open(FLAGS.out, "w") as f:
            f.write(markdown(made_by, title, medians, verdicts))
        print(f"wrote {FLAGS.out}")


LABELS = {"float": "float", "tfmot_qat_8bit": "tfmot 8-bit QAT", "learning": "learning phase (`bitprune_model`)",
          "frozen": "frozen (`freeze_bitlengths`)",
          "learning_range": "learning phase, `activation_range=\"learned\"`",
          "learning_clip": "learning phase, `weight_clip=\"learned\"`",
          "learning_range_clip": "learning phase, both learned",
          "learning_distill": "learning phase, `tfbp.Distill(float model)`"}


LEVERS_NOTE = (" The learning phase is also timed with each accuracy lever of docs/accuracy.md (each from the "
               "same float weights, after one calibrating step).")


def markdown(made_by, title, medians, verdicts) -> str:
    """The page docs/step_time.md: provenance, what was timed, the table."""
    wall, cpu = medians["wall"], medians["CPU"]
    rows = ["| variant | wall ms/step | × tfmot 8-bit QAT (wall) | × float (wall) | CPU ms/step "
            "| × tfmot 8-bit QAT (CPU) | × float (CPU) |", "|---|---|---|---|---|---|---|"]
    for name in wall:
        rows.append(f"| {LABELS[name]} | {wall[name] * 1e3:.3f} | {wall[name] / wall['tfmot_qat_8bit']:.2f} "
                    f"| {wall[name] / wall['float']:.2f} | {cpu[name] * 1e3:.3f} "
                    f"| {cpu[name] / cpu['tfmot_qat_8bit']:.2f} | {cpu[name] / cpu['float']:.2f} |")
    return (f"# Train step time\n\n{made_by}\n\n"
            "The compiled Keras train step of the digits CNN on one fixed batch, called directly (no `fit` "
            "bookkeeping): float, tfmot 8-bit QAT, the learning phase (`bitprune_model`) and the frozen "
            f"model (`freeze_bitlengths`, every tensor at {FLAGS.frozen_bits:g} bits). The variants are "
            "interleaved in a shuffled order so that load from other processes hits them alike; a time is "
            "the median over the repeats, in wall-clock time and in this process's CPU time (steadier "
            "when other processes share the cores). One run on a shared machine: compare ratios, not "
            f"milliseconds.{LEVERS_NOTE if FLAGS.levers else ''}\n\n{title}.\n\n" + "\n".join(rows) + "\n\n"
            + "".join(f"- {v}\n" for v in verdicts))


if __name__ == "__main__":
    app.run(main)
