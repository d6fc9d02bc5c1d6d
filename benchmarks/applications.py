"""Coverage of the ``keras.applications`` families: tfmot 8-bit QAT vs BitPruning.

Per family (random weights, ``classes=10``, ``classifier_activation=None``, the
smallest input each accepts): does tfmot's ``quantize_model`` -> TFLiteConverter ->
LiteRT work, and does ``bitprune_model -> fit(BitBudget) -> freeze_bitlengths ->
fit -> export_tflite -> LiteRT``; quantized tensors; top-1 agreement of our
``.tflite`` with the Keras model on 256 digits images, counted over inputs whose
Keras top-2 margin exceeds 5 % of the logit range (near-ties reported apart);
the largest logit difference relative to that range; the same after
``align_to_tflite`` (Keras' biases onto the file's int32 grid; ``ours`` is "yes"
at >= 99.5 % there); file sizes against tfmot int8 and float32. Models train a few hundred steps on scikit-learn's digits
(offline) resized to the input size and tiled to 3 channels.

    python benchmarks/applications.py                          # every family
    python benchmarks/applications.py --families=MobileNetV3Small,DenseNet121
    python benchmarks/applications.py --keras=3   # Keras 3 applications; docs/applications_keras3.*
    nohup python benchmarks/applications.py > /tmp/applications.log 2>&1 &

Each family runs in its own process; results go to ``--out``.json (merged with
earlier runs) and the table to ``--out``.md, which says the command that wrote it and
the commit every row ran at. ``--families=`` (none) rewrites the table from the json.
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
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

from absl import app, flags

from benchmarks.common import (agreement, digits, fast_bn_statistics, fit_arrays, print_row, row_in_subprocess,
                               export_learned_first, save_page)

# name -> (input size, extra constructor arguments, whether the model rescales [0, 255] itself)
FAMILIES = {
    "MobileNet": (32, {}, False),
    "MobileNetV2": (32, {}, False),
    "MobileNetV3Small": (32, {}, True),
    "MobileNetV3Large": (32, {}, True),
    "ResNet50": (32, {}, False),
    "ResNet50V2": (32, {}, False),
    "EfficientNetB0": (32, {}, True),
    "EfficientNetV2B0": (32, {}, True),
    "DenseNet121": (32, {}, False),
    "VGG16": (32, {}, False),
    "Xception": (71, {}, False),
    "InceptionV3": (75, {}, False),
    "NASNetMobile": (32, {}, False),
}
# (learning steps, fine-tuning steps, Adam's learning rate) per family where not the default:
# two epochs of the digits' 89 batches of 16, then 40 steps. MobileNet/MobileNetV2 take three
# epochs (after two they decide fewer inputs, 222 and 190 of 256: the same one-step differences
# on closer logits). VGG16 has no BatchNormalization: Adam 1e-3 does not train it (docs/concepts.md).
DEFAULT_RECIPE = (178, 40, 1e-3)
RECIPE = {"MobileNet": (267, 89, 1e-3), "MobileNetV2": (267, 89, 1e-3), "VGG16": (356, 178, 1e-4)}
# Not in keras.applications: 12 residual blocks (conv-BN-ReLU-conv-BN + identity, ReLU) on
# 8x8 digits, a cheap stand-in for ResNet50 when tracing where Keras and LiteRT part.
EXTRA = {"ResidualStack12": (8, {}, False)}

flags.DEFINE_list("families", list(FAMILIES), "Families to run.")
flags.DEFINE_integer("steps", None, "Learning-phase steps (BitBudget); default: RECIPE.")
flags.DEFINE_integer("finetune_steps", None, "Fine-tuning steps at frozen bitlengths; default: RECIPE.")
flags.DEFINE_integer("batch_size", 16, "Batch size.")
flags.DEFINE_float("target_bits", 6.0, "BitBudget target (uniform average bits).")
flags.DEFINE_integer("eval_inputs", 256, "Inputs compared between Keras and LiteRT.")
flags.DEFINE_float("tie_margin", 0.05, "Near-tie: Keras top-2 margin below this share of the logit range.")
flags.DEFINE_bool("tfmot", True, "Also try tfmot's 8-bit QAT.")
flags.DEFINE_enum("int4", "auto", ["auto", "true", "false"], "export_tflite(int4=...).")
flags.DEFINE_enum("keras", "2", ["2", "3"], "The Keras whose applications run: tf_keras (2) or Keras 3 "
                  "(`import keras`; no tfmot column: tfmot does not take Keras 3 models).")
flags.DEFINE_string("out", None, "Output prefix (.json, .md); default docs/applications (--keras=2), "
                    "docs/applications_keras3 (--keras=3).")
flags.DEFINE_enum("activation_range", "expand", ["expand", "ema", "learned"],
                  "bitprune_model(activation_range=...): these networks train from random weights (docs/concepts.md).")
flags.DEFINE_bool("trace", False, "Per quantized layer: share of elements LiteRT puts on another grid point than Keras.")
flags.DEFINE_bool("int8_only", False, "--keras=3: only the column of Keras 3's own model.quantize('int8') "
                  "(no training), merged into the rows of the last run.")
flags.DEFINE_string("one", None, "Internal: run one family in this process, print its JSON.")
FLAGS = flags.FLAGS


def K():
    """The Keras of this run (``--keras``)."""
    if FLAGS.keras == "3":
        import keras
        return keras
    import tf_keras
    return tf_keras


def out_prefix() -> str:
    default = "applications_keras3" if FLAGS.keras == "3" else "applications"
    return FLAGS.out or os.path.join(ROOT, "docs", default)


def build(name: str):
    keras = K()

    size, extra, _ = {**FAMILIES, **EXTRA}[name]
    if name == "ResidualStack12":
        return fast_bn_statistics(residual_stack(size, 12))
    model = getattr(keras.applications, name)(weights=None, input_shape=(size, size, 3), classes=10,
                                              classifier_activation=None, **extra)
    return fast_bn_statistics(model)


def residual_stack(size: int, blocks: int):
    keras = K()

    L = keras.layers
    inputs = keras.Input((size, size, 3))
    x = L.ReLU()(L.BatchNormalization()(L.Conv2D(16, 3, padding="same", use_bias=False)(inputs)))
    for _ in range(blocks):
        y = L.ReLU()(L.BatchNormalization()(L.Conv2D(16, 3, padding="same", use_bias=False)(x)))
        y = L.BatchNormalization()(L.Conv2D(16, 3, padding="same", use_bias=False)(y))
        x = L.Activation("relu")(L.Add()([x, y]))
    return keras.Model(inputs, L.Dense(10)(L.GlobalAveragePooling2D()(x)))




def _litert(path: str, x):
    """The file's float output on ``x`` in LiteRT (the tests' runner, one copy)."""
    from tests.support.litert_run import run_tflite

    return run_tflite(path, x)


def _log(*args) -> None:
    print(time.strftime("%H:%M:%S"), *args, file=sys.stderr, flush=True)


def _error(e: BaseException) -> str:
    text = f"{type(e).__name__}: {e}".replace("\n", " ")
    return text[:400]




def trace(frozen, path: str, x) -> list:
    """Where LiteRT and Keras part: for every layer with an output quantizer, in model
    order, the share of its elements one or more grid steps apart and the largest
    difference in steps (LiteRT tensors found by the layer's name scope)."""
    import numpy as np
    import tf_keras as keras
    from ai_edge_litert.interpreter import Interpreter

    from tf_bitpruning import costs

    names = [t.wrapper for t in costs.quantized_tensors(frozen) if t.kind == "activations"
             and frozen.get_layer(t.wrapper) not in [l for l in frozen.layers if not l._inbound_nodes]]
    sub = keras.Model(frozen.inputs, [frozen.get_layer(n).output for n in names])
    refs = sub.predict(x, verbose=0)
    it = Interpreter(model_path=path, experimental_preserve_all_tensors=True)
    inp = it.get_input_details()[0]
    it.resize_tensor_input(inp["index"], x.shape)
    it.allocate_tensors()
    it.set_tensor(inp["index"], x.astype(np.float32))
    it.invoke()
    details = {d["index"]: d for d in it.get_tensor_details()}
    last = {}
    sg_ops = []
    for d in it._get_ops_details():
        for o in d["outputs"]:
            sg_ops.append(o)
    for o in sg_ops:
        name = details[o]["name"]
        if not name.endswith("/refined"):  # fine_bias's finer copy of an input: another scale
            last[name.split("/")[0]] = o
    rows = []
    for name, ref in zip(names, refs):
        index = last.get(name)
        if index is None or tuple(details[index]["shape"]) != ref.shape:
            continue
        scale, zero = details[index]["quantization"]
        if not scale:
            continue
        got = (it.get_tensor(index).astype(np.float64) - zero) * scale
        steps = np.abs(got - ref) / scale
        rows.append({"layer": name, "off_share": round(float(np.mean(steps > 0.5)), 5),
                     "max_steps": round(float(steps.max()), 2)})
    return rows


def run_tfmot(name: str, xtr, ytr, workdir: str) -> dict:
    import tensorflow as tf
    import tensorflow_model_optimization as tfmot

    result = {}
    try:
        float_model = build(name)
        if FLAGS.keras == "3":
            converter = tf.lite.TFLiteConverter.from_concrete_functions(
                [tf.function(float_model).get_concrete_function(
                    tf.TensorSpec((1,) + tuple(float_model.inputs[0].shape[1:]), tf.float32))])
        else:
            converter = tf.lite.TFLiteConverter.from_keras_model(float_model)
        result["float32_bytes"] = len(converter.convert())
    except Exception as e:  # noqa: BLE001 (reported)
        result["float32_error"] = _error(e)
    if not FLAGS.tfmot or FLAGS.keras == "3":
        return result
    try:
        _log(name, "tfmot")
        q = tfmot.quantization.keras.quantize_model(build(name))
        q(xtr[:2], training=True)  # one calibration batch: the converter needs ranges, not accuracy
        converter = tf.lite.TFLiteConverter.from_keras_model(q)
        converter.optimizations = [tf.lite.Optimize.DEFAULT]
        content = converter.convert()
        path = os.path.join(workdir, "tfmot.tflite")
        with open(path, "wb") as f:
            f.write(content)
        _litert(path, xtr[:2])
        result.update(tfmot="yes", tfmot_bytes=len(content))
    except Exception as e:  # noqa: BLE001 (reported)
        result.update(tfmot="no", tfmot_error=_error(e))
    return result


def recipe(name: str):
    """(learning steps, fine-tuning steps, learning rate): the flags where given, else RECIPE."""
    steps, finetune_steps, lr = RECIPE.get(name, DEFAULT_RECIPE)
    return (FLAGS.steps if FLAGS.steps is not None else steps,
            FLAGS.finetune_steps if FLAGS.finetune_steps is not None else finetune_steps, lr)


def schedule(steps: int, examples: int) -> dict:
    """``fit`` arguments for exactly ``steps`` batches: the fewest epochs, equal lengths."""
    per_epoch = examples // FLAGS.batch_size
    epochs = -(-steps // per_epoch)
    if steps % epochs:
        raise SystemExit(f"--steps={steps}: not a whole number of equal epochs of at most {per_epoch} batches.")
    return {"epochs": epochs, "steps_per_epoch": steps // epochs}


def fit_steps(model, lr: float, steps: int, x, y, callbacks=()) -> None:
    """Compiles ``model`` (Adam at ``lr``, the digits' loss) and trains it exactly ``steps`` batches."""
    keras = K()
    model.compile(keras.optimizers.Adam(lr), keras.losses.SparseCategoricalCrossentropy(from_logits=True),
                  metrics=["accuracy"])
    fit_args = schedule(steps, len(x))
    model.fit(*fit_data(x, y, fit_args), batch_size=FLAGS.batch_size, callbacks=list(callbacks), verbose=0,
              **fit_args)


def fit_float(model, lr: float, steps: int, finetune_steps: int, x, y) -> None:
    """The float schedule of the 4-bit column: ``steps`` at ``lr``, then ``finetune_steps`` at a fifth."""
    fit_steps(model, lr, steps, x, y)
    fit_steps(model, lr / 5, finetune_steps, x, y)


def trained_float(name: str):
    """``(model, (x_train, y_train, x_test, y_test), (steps, finetune_steps, lr))``: the family
    built at seed 0 on its digits and trained in float at its recipe (the learning steps at
    ``lr``, the fine-tuning steps at a fifth of it), as the 4-bit column's float model is."""
    keras = K()
    size, _, raw = {**FAMILIES, **EXTRA}[name]
    xtr, ytr, xte, yte = digits(size, raw)
    steps, finetune_steps, lr = recipe(name)
    keras.utils.set_random_seed(0)
    model = build(name)
    fit_float(model, lr, steps, finetune_steps, xtr, ytr)
    return model, (xtr, ytr, xte, yte), (steps, finetune_steps, lr)


def fit_data(x, y, fit_args: dict) -> tuple:
    """``(x, y)`` that ``fit(**fit_args)`` draws exactly its steps from, either Keras."""
    return fit_arrays(x, y, fit_args["epochs"], fit_args["steps_per_epoch"], FLAGS.batch_size, FLAGS.keras == "3")


def commit() -> str:
    """The code a row was run with (``+uncommitted changes`` if the code was edited)."""
    from benchmarks.provenance import commit as code_commit

    return code_commit()


def run_ours(name: str, xtr, ytr, xte, yte, workdir: str) -> dict:
    import tf_bitpruning as tfbp
    from tf_bitpruning import costs

    stage = "bitprune_model"
    result = {}
    try:
        bp = tfbp.bitprune_model(build(name), regularization=0.01, activation_range=FLAGS.activation_range)
        result["activation_range"] = FLAGS.activation_range
        result["quantized_tensors"] = len(costs.quantized_tensors(bp))
        stage = "fit(BitBudget)"
        _log(name, stage)
        steps, finetune_steps, lr = recipe(name)
        result.update(steps=steps, finetune_steps=finetune_steps, learning_rate=lr)
        t0 = time.time()
        fit_steps(bp, lr, steps, xtr, ytr, [tfbp.BitBudget(FLAGS.target_bits)])
        result["learn_s"] = round(time.time() - t0, 1)
        result["avg_bits"] = round(tfbp.average_bits(bp), 2)
        stage = "freeze_bitlengths"
        _log(name, stage)
        frozen = tfbp.freeze_bitlengths(bp)
        stage = "fit (fine-tune)"
        fit_steps(frozen, lr / 5, finetune_steps, xtr, ytr)
        x = xte[:FLAGS.eval_inputs]
        result["accuracy"] = round(float(frozen.evaluate(xte, yte, verbose=0)[1]), 4)
        stage = "export_tflite"
        _log(name, stage)
        path = os.path.join(workdir, "ours.tflite")
        int4 = {"auto": "auto", "true": True, "false": False}[FLAGS.int4]
        # align=False: the agreement columns measure the model before and after align_to_tflite
        # (export_tflite's default, align=True, leaves it aligned).
        if export_learned_first(frozen, path, xtr[:64], int4=int4, align=False):
            result["representative_dataset"] = True
        result["ours_bytes"] = os.path.getsize(path)
        stage = "LiteRT"
        _log(name, stage)
        ref = frozen.predict(x, verbose=0, batch_size=64)
        got = _litert(path, x)
        result.update(agreement(ref, got, FLAGS.tie_margin))
        stage = "align_to_tflite"
        result["aligned_layers"] = len(tfbp.align_to_tflite(frozen, path))
        aligned = agreement(frozen.predict(x, verbose=0, batch_size=64), got, FLAGS.tie_margin)
        result.update({f"aligned_{k}": v for k, v in aligned.items()})
        result["aligned_accuracy"] = round(float(frozen.evaluate(xte, yte, verbose=0)[1]), 4)
        result["ours"] = ("untrained (all near-ties)" if not aligned["confident"]
                          else "yes" if aligned["agreement"] >= 0.995 else "disagrees")
        if FLAGS.trace:
            result["trace"] = trace(frozen, path, x[:16])
    except Exception as e:  # noqa: BLE001 (reported)
        result.update(ours="no", ours_stage=stage, ours_error=_error(e))
        traceback.print_exc()
    return result


def run_keras_int8(name: str) -> dict:
    """Keras 3's own post-training ``model.quantize("int8")`` on the float family: whether it
    takes the model, and which of its layers it quantizes (Dense, EinsumDense, Embedding only)."""
    import numpy as np

    size = {**FAMILIES, **EXTRA}[name][0]
    result = {"keras_int8_commit": commit()}
    try:
        model = build(name)
        model.quantize("int8")
        model.predict(np.zeros((1, size, size, 3), np.float32), verbose=0)
        done = [type(layer).__name__ for layer in model.layers if getattr(layer, "quantization_mode", None)]
        result.update(keras_int8="yes" if done else "no layer", keras_int8_layers=len(done),
                      keras_int8_kinds=sorted(set(done)), keras_int8_of=len(model.layers))
    except Exception as e:  # noqa: BLE001 (reported)
        result.update(keras_int8="no", keras_int8_error=_error(e))
    return result


def run_one(name: str) -> dict:
    keras = K()

    keras.utils.set_random_seed(0)
    if FLAGS.int8_only:
        return run_keras_int8(name)
    size, _, raw = {**FAMILIES, **EXTRA}[name]
    xtr, ytr, xte, yte = digits(size, raw)
    result = {"family": name, "input": size, "commit": commit(), "keras": keras.__version__}
    if FLAGS.keras == "3":
        result.update(run_keras_int8(name))
        keras.backend.clear_session()
    with tempfile.TemporaryDirectory() as workdir:
        result.update(run_tfmot(name, xtr, ytr, workdir))
        keras.backend.clear_session()
        keras.utils.set_random_seed(0)
        result.update(run_ours(name, xtr, ytr, xte, yte, workdir))
    return result


def _ratio(a, b) -> str:
    return f"{a / b:.2f}" if a and b else "–"


def table(results: dict, made_by: str = "") -> str:
    """The markdown page: provenance (this command, each row's commit), the table, tfmot's errors."""
    commits = sorted({r.get("commit", "unknown") for r in results.values()}
                     | {r["keras_int8_commit"] for r in results.values() if "keras_int8_commit" in r})
    head = ((f"{made_by} " if made_by else "")
            + f"Every row ran at commit {', '.join(commits)} (the `commit` of its row in `{os.path.basename(out_prefix())}.json`); "
            "a family not in `--families` keeps the row of its last run (its steps and learning rate are in "
            "that row too); tfmot's columns come from the last run that tried tfmot.\n\n"
            "| family | input | tfmot int8 | " + ("Keras 3 int8 (`model.quantize`) | " if FLAGS.keras == "3" else "")
            + "ours | quantized tensors | avg bits | test top-1 % "
            "| agreement % (confident) | near-ties | max logit diff / range | aligned: agreement % (confident) "
            "| aligned: max diff / range | size / tfmot int8 | size / float32 |\n"
            "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|" + ("---|" if FLAGS.keras == "3" else "") + "\n")
    rows = []
    for name in list(FAMILIES) + list(EXTRA):
        r = results.get(name)
        if r is None:
            continue
        ours = r.get("ours", "–")
        if ours == "no":
            ours = f"no ({r.get('ours_stage')})"
        agree = (f"{100 * r['agreement']:.1f} ({r['confident']})"
                 if r.get("agreement") is not None and r["agreement"] == r["agreement"] else "–")
        diff = f"{r['max_diff_over_range']:.3f}" if "max_diff_over_range" in r else "–"
        accuracy = f"{100 * r['accuracy']:.1f}" if r.get("accuracy") is not None else "–"
        aligned = (f"{100 * r['aligned_agreement']:.1f} ({r['aligned_confident']})"
                   if r.get("aligned_agreement") is not None and r["aligned_agreement"] == r["aligned_agreement"]
                   else "–")
        aligned_diff = f"{r['aligned_max_diff_over_range']:.3f}" if "aligned_max_diff_over_range" in r else "–"
        int8 = (f"{r['keras_int8']} ({r['keras_int8_layers']} of {r['keras_int8_of']} layers: "
                f"{', '.join(r['keras_int8_kinds']) or 'none'})" if "keras_int8_layers" in r
                else r.get("keras_int8", "–"))
        int8 = f"{int8} | " if FLAGS.keras == "3" else ""
        rows.append(f"| {name} | {r['input']} | {r.get('tfmot', '–')} | {int8}{ours} | {r.get('quantized_tensors', '–')} "
                    f"| {r.get('avg_bits', '–')} | {accuracy} | {agree} | {r.get('near_ties', '–')} | {diff} "
                    f"| {aligned} | {aligned_diff} "
                    f"| {_ratio(r.get('ours_bytes'), r.get('tfmot_bytes'))} "
                    f"| {_ratio(r.get('ours_bytes'), r.get('float32_bytes'))} |")
    errors = [f"- {n}: tfmot: {r['tfmot_error']}" for n, r in results.items() if r.get("tfmot_error")]
    errors += [f"- {n}: Keras 3 int8: {r['keras_int8_error']}" for n, r in results.items() if r.get("keras_int8_error")]
    errors += [f"- {n}: ours ({r['ours_stage']}): {r['ours_error']}" for n, r in results.items()
               if r.get("ours_error")]
    return head + "\n".join(rows) + ("\n\nErrors:\n\n" + "\n".join(errors) if errors else "") + "\n"


def main(argv):
    del argv
    if FLAGS.one:
        print_row(run_one(FLAGS.one))
        return
    unknown = sorted(set(FLAGS.families) - set(FAMILIES) - set(EXTRA))
    if unknown:
        raise SystemExit(f"--families: unknown {unknown}; choose from {sorted(FAMILIES) + sorted(EXTRA)}.")
    from benchmarks.provenance import stamp

    made_by = stamp()  # the code that runs is the code at this commit
    path = out_prefix() + ".json"
    results = json.load(open(path)) if os.path.exists(path) else {}
    passed = [a for a in sys.argv[1:] if not a.startswith(("--families", "--out", "--one"))]
    for name in FLAGS.families:
        t0 = time.time()
        row, stderr = row_in_subprocess(os.path.abspath(__file__), name, passed)
        if FLAGS.int8_only:  # one column, into the row of the last run
            results.setdefault(name, {"family": name, "input": {**FAMILIES, **EXTRA}[name][0]}).update(
                row or {"keras_int8": "crash", "keras_int8_error": stderr[-300:].replace("\n", " ")})
            save_page(out_prefix(), results, table(results, made_by))
            continue
        crashed = row is None
        if crashed:
            row = {"family": name, "input": {**FAMILIES, **EXTRA}[name][0], "ours": "no", "ours_stage": "crash",
                   "ours_error": stderr[-400:].replace("\n", " ")}
        if not FLAGS.tfmot or crashed:  # tfmot's columns stay those of the last run that tried it
            row.update({k: v for k, v in results.get(name, {}).items() if k.startswith("tfmot")})
        results[name] = row
        results[name]["seconds"] = round(time.time() - t0)
        print(f"{name}: {json.dumps(results[name])}", flush=True)
        if crashed:
            print(stderr[-3000:], flush=True)
        save_page(out_prefix(), results, table(results, made_by))
    with open(out_prefix() + ".md", "w") as f:
        f.write(table(results, made_by))
    print(table(results, made_by))


if __name__ == "__main__":
    app.run(main)
