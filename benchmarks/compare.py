"""Learned bitlengths vs uniform quantization, with numbers anyone can rerun.

For each task, the same architecture trained as float32, tfmot 8-bit QAT, tfmot uniform
n-bit QAT (``experimental.default_n_bit``) at 2, 3 and 4 bits, and BitPruning at several
budgets. For each: top-1, average weight / activation bits, weight memory, BOPs, train step
time (ratio to tfmot 8-bit, one run), ``.tflite`` size and LiteRT latency (ratio to tfmot int8).

BitPruning: ``BitBudget`` (annealing to integers over the last quarter, the integers chosen on
256 training inputs), 40 epochs; ``freeze_bitlengths(target_bits=...)``; fine-tuning 10 epochs
at 3e-4 keeping the epoch best on a held-out sixth of the training data; export to ``.tflite``,
whose own top-1 on the test set is recorded too. Every stage's accuracy and bits are written per
seed (``bitpruning_runs`` in the JSON, the last table of the .md). ``--weight_clip=max,mse`` runs
every budget with both weight grids (``bitprune_model(weight_clip=...)``).

    python benchmarks/compare.py                       # writes docs/comparison.{md,json,png}
    python benchmarks/compare.py --tasks=digits --budgets=2.5,2.75 --uniform_bits=3 --weighting=memory \
        --per_channel_bits --weight_clip=max,mse --out=docs/comparison_memory
    python benchmarks/compare.py --seeds=1 --quick     # a fast smoke run

``--levers`` adds rows for the accuracy levers of docs/accuracy.md (learned activation ranges,
learned weight clips, distillation from the float model, longer fine-tuning), each alone and
together, e.g. (docs/comparison_levers.md, docs/comparison_levers_mlp.md):

    python benchmarks/compare.py --tasks=digits --budgets=2.5,3 --uniform_bits= \
        --levers=default,range,range+clip --out=docs/comparison_levers

and with a longer learning phase (digits: 4,500 steps instead of 1,800; breast cancer: 1,700 instead
of 560) and, on digits, fine-tuning three times as long under a cosine decay from 1e-3
(docs/comparison_levers_long.md, docs/comparison_levers_mlp_long.md):

    python benchmarks/compare.py --tasks=digits --budgets=2.5,3 --uniform_bits= --levers=range \
        --learn_epochs=100 --finetune_epochs=30 --finetune_schedule=cosine --finetune_lr=1e-3 \
        --out=docs/comparison_levers_long
    python benchmarks/compare.py --tasks=breast_cancer --budgets=2.5,3 --uniform_bits= \
        --levers=default,range,range+clip --learn_epochs=120 --out=docs/comparison_levers_mlp_long
    python benchmarks/compare.py --tasks=breast_cancer --budgets=2.5,3 --uniform_bits= --levers=range,range+clip \
        --learn_epochs=120 --finetune_epochs=30 --finetune_schedule=cosine --finetune_lr=1e-3 \
        --out=docs/comparison_levers_mlp_long_cos

The ``fixed`` lever trains every tensor at the budget's (whole) bits from the start, without
``BitBudget`` (``bitprune_model(weight_bits=(n, n), activation_bits=(n, n))``): uniform QAT with
our quantizer and the same schedule and levers, to tell learned bitlengths from a better quantizer
(docs/comparison_uniform*.md):

    python benchmarks/compare.py --tasks=digits --budgets=2,3 --uniform_bits= --levers=range,fixed+range \
        --learn_epochs=100 --finetune_epochs=30 --finetune_schedule=cosine --finetune_lr=1e-3 \
        --out=docs/comparison_uniform

The ``allocate`` lever calls ``tfbp.allocate_bitlengths(bp, budget, 256 training inputs)`` on the
bit-pruned float model, so the learning phase starts at the budget (docs/comparison_allocate*.md;
the digits at ``--levers=range+allocate --budgets=2.5`` or ``3``, seeds 3-5 with ``--first_seed=3``):

    python benchmarks/compare.py --tasks=breast_cancer --budgets=2.5,3 --uniform_bits= --levers=range+clip+allocate \
        --learn_epochs=120 --finetune_epochs=30 --finetune_schedule=cosine --finetune_lr=1e-3 \
        --out=docs/comparison_allocate_mlp

The ``float_output`` lever leaves the model's output (the logits under the softmax) float and out of
the budget, as HGQ2 does (``bitprune_model(quantize_outputs=False)``; docs/comparison_float_output*.md):

    python benchmarks/compare.py --tasks=breast_cancer --budgets=2.5,3 --uniform_bits= \
        --levers=range+clip+float_output,range+clip+allocate+float_output --learn_epochs=120 --finetune_epochs=30 \
        --finetune_schedule=cosine --finetune_lr=1e-3 --seeds=6 --out=docs/comparison_float_output_mlp

Against HGQ2 (docs/accuracy.md "Against HGQ2"): the digits recipe with learned clips too, the MLP's
3-bit recipe with one bitlength per output channel, and with the float trained as HGQ2's float control
trains (150 epochs under a cosine from 3e-3); the MLP's seeds 3-5 with ``--first_seed=3 --seeds=3``:

    python benchmarks/compare.py --tasks=digits --budgets=2.5,3 --uniform_bits= --levers=range+clip \
        --learn_epochs=100 --finetune_epochs=30 --finetune_schedule=cosine --finetune_lr=1e-3 \
        --out=docs/comparison_levers_long_clip
    python benchmarks/compare.py --tasks=breast_cancer --budgets=3 --uniform_bits= --levers=range+clip \
        --learn_epochs=120 --finetune_epochs=30 --finetune_schedule=cosine --finetune_lr=1e-3 \
        --per_channel_bits --out=docs/comparison_levers_mlp_per_channel
    python benchmarks/compare.py --tasks=breast_cancer --budgets=3 --uniform_bits= --levers=range+clip \
        --learn_epochs=120 --finetune_epochs=30 --finetune_schedule=cosine --finetune_lr=1e-3 \
        --float_epochs=150 --float_lr=3e-3 --float_schedule=cosine --out=docs/comparison_levers_mlp_float150

Each fine-tuned run records its accuracy on the sixth that fine-tuning holds out (``holdout_top1``,
the per-seed table's last column). The float and learning phases train on all the training data,
that sixth included, so it is not unseen data: on both tasks it reads 100 % on every run so far,
and it cannot choose among variants. ``--holdout_unseen`` keeps it out of every phase, so that it
can (docs/comparison_holdout*.md):

    python benchmarks/compare.py --tasks=breast_cancer --budgets=2.5,3 --uniform_bits= --levers=range+clip \
        --learn_epochs=120 --finetune_epochs=30 --finetune_schedule=cosine --finetune_lr=1e-3 \
        --holdout_unseen --seeds=6 --out=docs/comparison_holdout_mlp
"""

from __future__ import annotations

import json
import os
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from absl import app, flags

from benchmarks import compare_page as page

flags.DEFINE_list("tasks", ["digits", "breast_cancer"], "Offline tasks: digits (CNN), breast_cancer (MLP).")
flags.DEFINE_integer("seeds", 3, "Seeds per method.")
flags.DEFINE_list("budgets", ["2.5", "3", "3.25", "4"], "BitPruning target average bits (in --weighting).")
flags.DEFINE_list("uniform_bits", ["2", "3", "4"], "tfmot default_n_bit bitlengths.")
flags.DEFINE_float("bits_lr_multiplier", 20.0, "BitPruning bitlength rate (see docs/concepts.md).")
flags.DEFINE_enum("rounding", "ceil", ["ceil", "round"], "How freeze_bitlengths rounds the learned bits.")
flags.DEFINE_float("finetune_lr", 3e-4, "Adam learning rate of the fine-tuning at frozen bitlengths.")
flags.DEFINE_integer("learn_epochs", 40, "Epochs of the learning phase (BitBudget at 1e-3).")
flags.DEFINE_integer("finetune_epochs", 10, "Epochs of the fine-tuning at frozen bitlengths (the long lever: 3x).")
flags.DEFINE_enum("finetune_schedule", "constant", ["constant", "cosine"],
                  "Fine-tuning learning rate: constant, or cosine decay from --finetune_lr to 0 over the epochs.")
flags.DEFINE_bool("holdout_unseen", False, "Keep the sixth that fine-tuning holds out out of every phase (float, QAT, "
                  "learning phase) too, so that the fine-tuning epoch is chosen on data no phase trained on.")
flags.DEFINE_bool("finetune_holdout", True, "Fine-tune on five sixths of the training data and keep the epoch best "
                  "on the other sixth; --nofinetune_holdout: on all of it, keeping the last epoch (as HGQ2's runs train).")
flags.DEFINE_integer("first_seed", 0, "Seeds run are first_seed .. first_seed + seeds - 1.")
flags.DEFINE_enum("weighting", "uniform", ["uniform", "memory", "bops"], "BitBudget weighting of the budget.")
flags.DEFINE_float("anneal", 0.25, "BitBudget(anneal=...): share of the learning phase that slides the bits to integers.")
flags.DEFINE_bool("exact", True, "Freeze with target_bits (the deployed model is at or under the budget).")
flags.DEFINE_bool("per_channel_bits", False, "One learned bitlength per output channel (bitprune_model option).")
flags.DEFINE_list("weight_clip", ["max"], "bitprune_model(weight_clip=...), one BitPruning run per value and "
                  "budget: max (max|w|, the spec's min-max) and/or mse (the least-squared-error clip).")
flags.DEFINE_enum("activation_range", "ema", ["ema", "expand"], "bitprune_model(activation_range=...).")
flags.DEFINE_list("levers", ["default"], "Accuracy levers, one BitPruning run per entry and budget: default, or "
                  "'+'-joined range (activation_range='learned'), clip (weight_clip='learned'), distill (tfbp.Distill(float model) in both "
                  "phases), long (3x the fine-tuning epochs), allocate (tfbp.allocate_bitlengths(bp, budget, 256 training "
                  "inputs) before the learning phase: it starts at the budget), fixed (every tensor at the budget's bits throughout, no BitBudget: "
                  "uniform QAT with our quantizer, rows 'Uniform n bits'), float_output (bitprune_model(quantize_outputs=False): "
                  "the model's output, the logits, stays float and out of the budget, as HGQ2 leaves it).")
flags.DEFINE_float("distill_weight", 1.0, "tfbp.Distill(weight=...) of the distill lever.")
flags.DEFINE_float("distill_temperature", 2.0, "tfbp.Distill(temperature=...) of the distill lever.")
flags.DEFINE_bool("calibrate", True, "Give BitBudget and freeze_bitlengths 256 training inputs as calibration_data.")
flags.DEFINE_bool("quick", False, "Few epochs, for a smoke run.")
flags.DEFINE_string("out", os.path.join(ROOT, "docs", "comparison"), "Output prefix (.md, .json, .png).")
FLAGS = flags.FLAGS

# The float phase (issue 20: HGQ2's float control trains 150 epochs under a cosine from 3e-3).
flags.DEFINE_integer("float_epochs", 20, "Epochs of the float training every method starts from.")
flags.DEFINE_float("float_lr", 2e-3, "Adam learning rate of the float training.")
flags.DEFINE_enum("float_schedule", "constant", ["constant", "cosine"],
                  "Float training rate: constant, or cosine decay from --float_lr to 0 over its steps.")


def _tasks():
    import tf_keras as keras

    from benchmarks.common import breast_cancer
    from examples import data
    from examples.models import cnn

    def mlp(shape):
        L = keras.layers
        return keras.Sequential([keras.Input(shape), L.Dense(64, activation="relu"),
                                 L.Dense(32, activation="relu"), L.Dense(2, activation="softmax")])

    return {
        "digits": (lambda: data.load("digits"), lambda shape: cnn(shape, 10)),
        "breast_cancer": (breast_cancer, mlp),
    }


def _epochs():
    if FLAGS.quick:
        return dict(float=3, qat=2, learn=3, finetune=1)
    return dict(float=FLAGS.float_epochs, qat=10, learn=FLAGS.learn_epochs, finetune=FLAGS.finetune_epochs)


def _step_time(model, x, y, steps=30, batch=64, callbacks=()):
    """Median seconds per train step (after one warm-up step), with ``callbacks``'
    train-begin changes (Distill's loss) in place. The model's weights are restored
    afterwards: the timed steps train on one batch."""
    import numpy as np

    for callback in callbacks:
        callback.set_model(model)
        callback.on_train_begin()
    weights = model.get_weights()
    xb, yb = x[:batch], y[:batch]
    model.train_on_batch(xb, yb)
    times = []
    for _ in range(steps):
        t = time.perf_counter()
        model.train_on_batch(xb, yb)
        times.append(time.perf_counter() - t)
    model.set_weights(weights)
    for callback in callbacks:
        callback.on_train_end()
    return float(np.median(times))




def _fixed_bits(target):
    """The ``fixed`` lever: every tensor at ``target`` bits for the whole run (uniform QAT
    with our quantizer and the other levers; the bitlengths cannot move)."""
    bits = float(target)
    if bits != int(bits) or bits < 2:
        raise app.UsageError(f"--levers=...fixed: budget {target} is not a whole number of bits of at least 2 "
                             "(the weights' floor); give --budgets such as 2,3.")
    return dict(weight_bits=(int(bits), int(bits)), activation_bits=(int(bits), int(bits)))


def _fine_tune(model, xtr, ytr, xte, yte, epochs, callbacks=()):
    """Fine-tunes a compiled frozen model, keeping the epoch that does best on a
    held-out sixth of the training data (never one below where it started, as the
    example does), or with --nofinetune_holdout on all of it, keeping the last epoch;
    returns the test accuracy."""
    import tf_keras as keras

    _fine_tune.holdout_top1 = None
    if not FLAGS.finetune_holdout:
        model.fit(xtr, ytr, epochs=epochs, batch_size=32, callbacks=list(callbacks), verbose=0)
        return float(model.evaluate(xte, yte, verbose=0)[1])
    n_val = len(xtr) // 6
    held = (xtr[-n_val:], ytr[-n_val:])
    start, weights = model.evaluate(*held, verbose=0)[1], model.get_weights()
    best = keras.callbacks.EarlyStopping("val_accuracy", patience=epochs, restore_best_weights=True)
    history = model.fit(xtr[:-n_val], ytr[:-n_val], epochs=epochs, batch_size=32, validation_data=held,
                        callbacks=[best, *callbacks], verbose=0)
    if max(history.history["val_accuracy"]) < start:
        model.set_weights(weights)
    _fine_tune.holdout_top1 = float(model.evaluate(*held, verbose=0)[1])  # unseen only with --holdout_unseen
    return float(model.evaluate(xte, yte, verbose=0)[1])


def _finetune_lr(epochs, n_train):
    """--finetune_lr, constant or decayed to 0 by a cosine over the fine-tuning's steps
    (``_fine_tune`` trains on five sixths of ``n_train`` in batches of 32)."""
    import math

    import tf_keras as keras

    if FLAGS.finetune_schedule == "constant":
        return FLAGS.finetune_lr
    steps = epochs * math.ceil((n_train - (n_train // 6 if FLAGS.finetune_holdout else 0)) / 32)
    return keras.optimizers.schedules.CosineDecay(FLAGS.finetune_lr, steps)


def _float_lr(epochs, n_train):
    """--float_lr, constant or decayed to 0 by a cosine over the float training's steps
    (all of ``n_train`` in batches of 32, as HGQ2's runs train)."""
    import math

    import tf_keras as keras

    if FLAGS.float_schedule == "constant":
        return FLAGS.float_lr
    return keras.optimizers.schedules.CosineDecay(FLAGS.float_lr, epochs * math.ceil(n_train / 32))


def _tflite_latency(path, x, n=200):
    import numpy as np
    from ai_edge_litert.interpreter import Interpreter

    interp = Interpreter(model_path=path)
    interp.allocate_tensors()
    inp = interp.get_input_details()[0]
    times = []
    for sample in x[:n]:
        value = sample[None]
        if inp["dtype"] != np.float32:
            scale, zero = inp["quantization"]
            value = np.clip(np.round(value / scale + zero), -128, 127).astype(inp["dtype"])
        interp.set_tensor(inp["index"], value)
        t = time.perf_counter()
        interp.invoke()
        times.append(time.perf_counter() - t)
    return float(np.median(times))


def _tflite_top1(path, x, y):
    """Top-1 of the exported file itself on the test set (LiteRT, float in and out)."""
    import numpy as np
    from ai_edge_litert.interpreter import Interpreter

    interp = Interpreter(model_path=path)
    inp, out = interp.get_input_details()[0], interp.get_output_details()[0]
    interp.resize_tensor_input(inp["index"], x.shape)
    interp.allocate_tensors()
    interp.set_tensor(inp["index"], x.astype(np.float32))
    interp.invoke()
    return float(np.mean(np.argmax(interp.get_tensor(out["index"]), axis=-1) == y))


def _tfmot_tflite(model, x, path):
    import numpy as np
    import tensorflow as tf

    converter = tf.lite.TFLiteConverter.from_keras_model(model)
    converter.optimizations = [tf.lite.Optimize.DEFAULT]
    converter.representative_dataset = lambda: ([s[None].astype(np.float32)] for s in x[:128])
    with open(path, "wb") as f:
        f.write(converter.convert())
    return path


def _row(method, acc, w_bits, a_bits, inventory, step, size, latency, macs_bits=None):
    params = sum(t.elements for t in inventory if t.kind == "weights")
    macs = sum(t.macs for t in inventory if t.kind == "weights")
    return dict(method=method, top1=acc, weight_bits=w_bits, activation_bits=a_bits,
                weight_kb=params * w_bits / 8 / 1024,
                bops_m=(macs_bits if macs_bits is not None else macs * w_bits * a_bits) / 1e6,
                step_s=step, tflite_bytes=size, latency_s=latency)


def run_task(name, load, build, seed, tmp):
    import numpy as np
    import tensorflow_model_optimization as tfmot
    import tf_keras as keras

    import tf_bitpruning as tfbp
    from tf_bitpruning import costs

    ep = _epochs()
    xtr, ytr, xte, yte = load()
    loss = "sparse_categorical_crossentropy"
    rows = []

    n_fit = len(xtr) - len(xtr) // 6 if FLAGS.holdout_unseen else len(xtr)  # _fine_tune holds out the rest

    def fit(model, lr, epochs, callbacks=()):
        model.compile(keras.optimizers.Adam(lr), loss, metrics=["accuracy"])
        model.fit(xtr[:n_fit], ytr[:n_fit], epochs=epochs, batch_size=32, verbose=0, callbacks=list(callbacks))
        return float(model.evaluate(xte, yte, verbose=0)[1])

    keras.utils.set_random_seed(seed)
    base = build(xtr.shape[1:])
    float_acc = fit(base, _float_lr(ep["float"], len(xtr)), ep["float"])
    inventory = costs.quantized_tensors(tfbp.bitprune_model(base))  # MACs and params of the architecture
    float_path = os.path.join(tmp, f"{name}_float.tflite")
    import tensorflow as tf

    with open(float_path, "wb") as f:
        f.write(tf.lite.TFLiteConverter.from_keras_model(base).convert())
    rows.append(_row("float32", float_acc, 32, 32, inventory, _step_time(base, xtr, ytr),
                     os.path.getsize(float_path), _tflite_latency(float_path, xte)))

    qat_schemes = [("tfmot 8-bit QAT", 8, None)] + [
        (f"tfmot {b}-bit QAT", int(b), tfmot.quantization.keras.experimental.default_n_bit.DefaultNBitQuantizeScheme(
            num_bits_weight=int(b), num_bits_activation=int(b))) for b in FLAGS.uniform_bits]
    for label, bits, scheme in qat_schemes:
        keras.utils.set_random_seed(seed)
        annotated = tfmot.quantization.keras.quantize_annotate_model(base)
        with tfmot.quantization.keras.quantize_scope():
            qat = (tfmot.quantization.keras.quantize_apply(annotated, scheme) if scheme is not None
                   else tfmot.quantization.keras.quantize_apply(annotated))
        acc = fit(qat, 1e-3, ep["qat"])
        try:
            path = _tfmot_tflite(qat, xtr, os.path.join(tmp, f"{name}_qat{bits}.tflite"))
            size, latency = os.path.getsize(path), _tflite_latency(path, xte)
        except Exception as err:  # tfmot's experimental n-bit models do not always convert
            print(f"{label}: TFLite conversion failed ({str(err).splitlines()[0][:120]})", flush=True)
            size = latency = float("nan")
        rows.append(_row(label, acc, bits, bits, inventory, _step_time(qat, xtr, ytr), size, latency))

    for levers, target, clip in [(v, t, c) for v in FLAGS.levers for c in FLAGS.weight_clip for t in FLAGS.budgets]:
        levers = page.levers(levers)
        fixed = _fixed_bits(target) if "fixed" in levers else {}
        keras.utils.set_random_seed(seed)
        bp = tfbp.bitprune_model(base, bits_lr_multiplier=FLAGS.bits_lr_multiplier,
                                 per_channel_bits=FLAGS.per_channel_bits, **fixed,
                                 quantize_outputs="float_output" not in levers,
                                 weight_clip="learned" if "clip" in levers else clip,
                                 activation_range="learned" if "range" in levers else FLAGS.activation_range)
        if "allocate" in levers:  # start the learning phase at the budget (base is the trained float model)
            tfbp.allocate_bitlengths(bp, float(target), xtr[:256], weighting=FLAGS.weighting)
        distill = [tfbp.Distill(base, FLAGS.distill_weight, FLAGS.distill_temperature)] if "distill" in levers else []
        calibration = xtr[:256] if FLAGS.calibrate else None
        budget = [] if fixed else [tfbp.BitBudget(target_bits=float(target), weighting=FLAGS.weighting,
                                                  anneal=FLAGS.anneal, calibration_data=calibration)]
        learn_acc = fit(bp, 1e-3, ep["learn"], [*budget, *distill])
        learn_bits = tfbp.average_bits(bp, weighting=FLAGS.weighting)
        learn_step = _step_time(bp, xtr, ytr, callbacks=distill)
        exact = dict(target_bits=float(target), calibration_data=calibration) if FLAGS.exact and not fixed else {}
        frozen = tfbp.freeze_bitlengths(bp, rounding=FLAGS.rounding, weighting=FLAGS.weighting, **exact)
        tune_epochs = ep["finetune"] * (3 if "long" in levers else 1)
        frozen.compile(keras.optimizers.Adam(_finetune_lr(tune_epochs, len(xtr))), loss, metrics=["accuracy"])
        frozen_acc = float(frozen.evaluate(xte, yte, verbose=0)[1])
        acc = _fine_tune(frozen, xtr, ytr, xte, yte, tune_epochs, distill)
        path = os.path.join(tmp, f"{name}_bp{target}.tflite")
        tfbp.export_tflite(frozen, path, representative_dataset=xtr[:128])
        tensors = costs.quantized_tensors(frozen)
        w = [t for t in tensors if t.kind == "weights"]
        w_bits = sum(t.elements * float(t.bits()) for t in w) / sum(t.elements for t in w)
        bops = sum(t.macs * float(t.bits()) * float(t.input_bits()) for t in w)
        suffix = "".join(f", {v}" for v, d in ((FLAGS.rounding, "ceil"), (FLAGS.weighting, "uniform"),
                                               ("per-channel" if FLAGS.per_channel_bits else "", ""),
                                               ("mse clip" if clip == "mse" else "", ""),
                                               (f"{FLAGS.learn_epochs}-epoch learning", "40-epoch learning"),
                                               (f"{FLAGS.finetune_epochs}-epoch fine-tuning", "10-epoch fine-tuning"),
                                               ("" if FLAGS.finetune_holdout else "fine-tuning on all, last epoch", ""),
                                               ("held-out sixth unseen" if FLAGS.holdout_unseen else "", ""),
                                               ("cosine fine-tuning" if FLAGS.finetune_schedule == "cosine" else "", ""),
                                               *((page.LEVERS[v], "") for v in levers)) if v != d)
        suffix = f" ({suffix[2:]})" if suffix else ""
        rows.append(_row(f"{'Uniform' if fixed else 'BitPruning'} {target} bits{suffix}", acc, w_bits,
                         tfbp.average_bits(frozen, kind="activations"), w, learn_step,
                         os.path.getsize(path), _tflite_latency(path, xte), macs_bits=bops))
        rows[-1]["holdout_top1"] = _fine_tune.holdout_top1
        rows[-1]["uniform_avg_bits"] = tfbp.average_bits(frozen)
        rows[-1]["memory_avg_bits"] = tfbp.average_bits(frozen, weighting="memory")
        rows[-1].update(float_top1=float_acc, learn_top1=learn_acc, learn_bits=learn_bits, frozen_top1=frozen_acc,
                        deployed_bits=tfbp.average_bits(frozen, weighting=FLAGS.weighting),
                        tflite_top1=_tflite_top1(path, xte, yte),
                        tensor_bits={t.name: float(t.bits()) for t in tensors},
                        # HGQ2 leaves the model's output unquantized: the average without it (the
                        # last tensor, unless float_output left it float already)
                        bits_no_output=float(np.mean([float(t.bits()) for t in tensors
                                                      if t.name != tensors[-1].name or t.kind == "weights"])))
        print(f"{name} seed {seed} {rows[-1]['method']} ({FLAGS.weighting}): float {100 * float_acc:.2f} | learning "
              f"phase {100 * learn_acc:.2f} at {learn_bits:.3f} bits | frozen {100 * frozen_acc:.2f} | deployed "
              f"{100 * acc:.2f} at {rows[-1]['deployed_bits']:.3f} bits (.tflite {100 * rows[-1]['tflite_top1']:.2f}); "
              f"per tensor {rows[-1]['tensor_bits']}",
              flush=True)
    return rows


def main(argv):
    del argv
    bad = set(FLAGS.weight_clip) - {"max", "mse"}
    if bad:
        raise app.UsageError(f"--weight_clip: unknown value(s) {sorted(bad)}; use max and/or mse.")
    if FLAGS.holdout_unseen and not FLAGS.finetune_holdout:
        raise app.UsageError("--holdout_unseen keeps the fine-tuning's held-out sixth unseen: it needs --finetune_holdout.")
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    from benchmarks.provenance import stamp

    made_by = stamp()  # the code that runs is the code at this commit
    tasks = _tasks()
    results, runs = {}, {}
    with tempfile.TemporaryDirectory() as tmp:
        for task in FLAGS.tasks:
            load, build = tasks[task]
            per_seed = [run_task(task, load, build, seed, tmp) for seed in range(FLAGS.first_seed, FLAGS.first_seed + FLAGS.seeds)]
            results[task] = page.aggregate(per_seed)
            runs[task] = [r for rows in per_seed for r in rows if "deployed_bits" in r]
            print(page.markdown({task: results[task]}, FLAGS.seeds), flush=True)
    os.makedirs(os.path.dirname(FLAGS.out), exist_ok=True)
    with open(FLAGS.out + ".json", "w") as f:
        json.dump(dict(results, bitpruning_runs=runs), f, indent=1)
    with open(FLAGS.out + ".md", "w") as f:
        per_seed_runs = len(FLAGS.budgets) * len(FLAGS.weight_clip) * len(FLAGS.levers)
        f.write(made_by + "\n\n" + page.markdown(results, FLAGS.seeds)
                + page.runs_markdown(runs, FLAGS.first_seed, per_seed_runs))
    page.plot(results, FLAGS.out + ".png", FLAGS.weighting)
    print(f"wrote {FLAGS.out}.md/.json/.png")


if __name__ == "__main__":
    app.run(main)
