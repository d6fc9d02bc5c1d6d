"""Coverage of the model patterns users write, under tf_keras and Keras 3.

Rows: Keras' transfer-learning recipe (augmentation Sequential -> Rescaling ->
``backbone(x, training=False)`` -> pooling -> Dropout -> Dense) with a
MobileNetV2 (alpha 0.35) and an EfficientNetB0 backbone, the same with the
augmentation inline, ``Sequential([backbone, pooling, Dense])``, a text classifier
(Embedding -> Conv1D -> 1-D pooling -> Dense), a transformer encoder block
(LayerNormalization, MultiHeadAttention, Dense(gelu) on 3-D inputs, Add) and
LSTM / GRU models. Columns: whether tfmot's 8-bit QAT (tf_keras) or Keras 3's
``model.quantize("int8")`` accepts the model, whether ours goes
``bitprune_model -> fit(BitBudget) -> freeze_bitlengths -> fit -> export_tflite``
(or the stage and error where it stops), quantized tensors, average bits, float ->
deployed test accuracy, and the top-1 agreement of the ``.tflite`` with the Keras
model on decided inputs (Keras top-2 margin above 5 % of the logit range).

Tasks, all offline: digits (scikit-learn) resized to 32x32x3 in [0, 255] for the
images; digits as 8 rows of 8 features for the sequence models; a synthetic keyword
task for the text classifier (4 classes, 64 tokens, 24 per sequence).

    python benchmarks/patterns.py                                # every row, both Kerases
    python benchmarks/patterns.py --patterns=text,lstm --kerases=keras3
    python benchmarks/patterns.py --patterns= --out=docs/patterns    # the table of the json only

Each row and seed runs in its own process, seeded, with TensorFlow's op determinism
on (a rerun of a row and seed gives the same numbers); results merge into ``--out``.json
and the table (mean ± std over ``--seeds``) goes to ``--out``.md, stamped with this
command and each row's commit.

Columns "float" and "float, same schedule": the model the user starts from, and that
model trained through the same epochs, learning rates and augmentation as the bit-pruned
one but without bit pruning (what the schedule alone does, apart from quantization).

The image rows with a frozen-then-unfrozen backbone (the recipe and the inline
augmentation) bit-prune at the fine-tuning stage of Keras' recipe, so they use its low
learning rate for an unfrozen pretrained backbone: Adam ``--backbone_lr`` (1e-4; fine-tuning
at frozen bitlengths at a fifth of it) with ``bitprune_model(..., bits_lr_multiplier=100)``
so the bitlengths move as fast as with the defaults (``--backbone_lr=1e-3
--backbone_bits_lr_multiplier=10`` is the schedule of the other rows).
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

from benchmarks import pattern_table
from benchmarks.common import accuracy, print_row, row_in_subprocess, save_page

KERASES = ("tf_keras", "keras3")
PATTERNS = {  # name -> (task, description)
    "recipe_mobilenetv2": ("images", "transfer-learning recipe, MobileNetV2 (alpha 0.35) backbone"),
    "recipe_efficientnetb0": ("images", "transfer-learning recipe, EfficientNetB0 backbone"),
    "inline_augmentation": ("images", "augmentation layers inline, MobileNetV2 backbone"),
    "sequential_backbone": ("images", "Sequential([backbone, GlobalAveragePooling2D, Dense])"),
    "text": ("text", "Embedding -> Conv1D -> GlobalAveragePooling1D -> Dense"),
    "transformer": ("rows", "transformer encoder block (LayerNorm, MultiHeadAttention, gelu MLP, Add)"),
    "lstm": ("rows", "LSTM(32) -> Dense"),
    "gru": ("rows", "GRU(32) -> Dense"),
}

flags.DEFINE_list("patterns", list(PATTERNS), "Rows to run.")
flags.DEFINE_list("kerases", list(KERASES), "Kerases to run each row under.")
flags.DEFINE_float("target_bits", 6.0, "BitBudget target (uniform average bits).")
flags.DEFINE_integer("float_epochs", 8, "Epochs of float training before bit pruning.")
flags.DEFINE_integer("epochs", 4, "Epochs with BitBudget.")
flags.DEFINE_integer("finetune_epochs", 2, "Epochs at frozen bitlengths.")
flags.DEFINE_integer("batch_size", 32, "Batch size.")
flags.DEFINE_integer("seeds", 3, "Seeds per row (0, 1, ...); the table shows mean ± std.")
flags.DEFINE_float("backbone_lr", 1e-4, "Adam learning rate of bit pruning an unfrozen pretrained backbone "
                   "(the recipe's fine-tuning stage); the fine-tuning at frozen bitlengths uses a fifth of it.")
flags.DEFINE_float("backbone_bits_lr_multiplier", 100.0, "bits_lr_multiplier with --backbone_lr (100 at 1e-4: "
                   "bitlengths step as with the defaults, 10 at 1e-3).")
flags.DEFINE_float("tie_margin", 0.05, "Near-tie: Keras top-2 margin below this share of the logit range.")
flags.DEFINE_string("out", os.path.join(ROOT, "docs", "patterns"), "Output prefix (.json, .md).")
flags.DEFINE_string("one", None, "Internal: run one 'pattern:keras' in this process, print its JSON.")
FLAGS = flags.FLAGS


def keras_module(name: str):
    if name == "keras3":
        import keras
    else:
        import tf_keras as keras
    return keras


# -- tasks -----------------------------------------------------------------------------------------

def task(name: str):
    """``(x_train, y_train, x_test, y_test, classes)`` for a task of ``PATTERNS``."""
    import numpy as np

    from benchmarks.common import digits

    if name == "images":
        xtr, ytr, xte, yte = digits(32, raw_255=True)
        return xtr, ytr, xte, yte, 10
    if name == "rows":
        from examples import data

        xtr, ytr, xte, yte = data.load("digits")
        return xtr[..., 0], ytr, xte[..., 0], yte, 10
    rng = np.random.default_rng(0)  # text: 4 classes, 4 keywords each, among filler tokens 16..63
    n, length, classes = 2400, 24, 4
    y = rng.integers(0, classes, n)
    x = rng.integers(16, 64, (n, length))
    for i in range(n):
        spots = rng.choice(length, 4, replace=False)
        x[i, spots[:3]] = 4 * y[i] + rng.integers(0, 4, 3)  # three keywords of its class
        x[i, spots[3]] = 4 * ((y[i] + rng.integers(1, classes)) % classes) + rng.integers(0, 4)  # one decoy
    x = x.astype("int32")
    return x[:2000], y[:2000].astype("int32"), x[2000:], y[2000:].astype("int32"), classes


# -- models ----------------------------------------------------------------------------------------

def backbone(K, which: str):
    from benchmarks.common import fast_bn_statistics

    if which == "efficientnetb0":
        return fast_bn_statistics(K.applications.EfficientNetB0(weights=None, include_top=False, input_shape=(32, 32, 3)))
    return fast_bn_statistics(
        K.applications.MobileNetV2(alpha=0.35, weights=None, include_top=False, input_shape=(32, 32, 3)))


def augmentation(K):
    return [K.layers.RandomFlip("horizontal"), K.layers.RandomRotation(0.05)]


def build(pattern: str, K, classes: int, base=None):
    """The float model of a row; ``base``: its (pretrained) backbone, default a fresh one."""
    L = K.layers
    if pattern == "sequential_backbone":
        return K.Sequential([K.Input((32, 32, 3)), L.Rescaling(1 / 127.5, offset=-1),
                             base or backbone(K, "mobilenetv2"), L.GlobalAveragePooling2D(), L.Dense(classes)])
    if pattern.startswith(("recipe", "inline")):
        which = pattern.split("_", 1)[1] if pattern.startswith("recipe") else "mobilenetv2"
        inputs = K.Input((32, 32, 3))
        if pattern.startswith("recipe"):
            x = K.Sequential(augmentation(K), name="data_augmentation")(inputs)
        else:
            x = inputs
            for layer in augmentation(K):
                x = layer(x)
        if which == "mobilenetv2":  # EfficientNet rescales [0, 255] itself
            x = L.Rescaling(1 / 127.5, offset=-1)(x)
        x = (base or backbone(K, which))(x, training=False)
        x = L.Dropout(0.2)(L.GlobalAveragePooling2D()(x))
        return K.Model(inputs, L.Dense(classes)(x))
    if pattern == "text":
        inputs = K.Input((24,), dtype="int32")
        x = L.Embedding(64, 16)(inputs)
        x = L.Conv1D(32, 3, activation="relu")(x)
        x = L.GlobalAveragePooling1D()(x)
        return K.Model(inputs, L.Dense(classes)(x))
    inputs = K.Input((8, 8))
    if pattern in ("lstm", "gru"):
        rnn = L.LSTM if pattern == "lstm" else L.GRU  # unroll: TFLite's integer LSTM/GRU (docs/export.md)
        return K.Model(inputs, L.Dense(classes)(rnn(32, unroll=True)(inputs)))
    x = L.Dense(32)(inputs)  # transformer: 8 tokens (the rows) of 32 features
    h = L.LayerNormalization()(x)
    x = L.Add()([x, L.MultiHeadAttention(num_heads=2, key_dim=16)(h, h)])
    h = L.LayerNormalization()(x)
    x = L.Add()([x, L.Dense(32)(L.Dense(64, activation="gelu")(h))])
    x = L.GlobalAveragePooling1D()(L.LayerNormalization()(x))
    return K.Model(inputs, L.Dense(classes)(x))


# -- one row ---------------------------------------------------------------------------------------

def _error(e: BaseException) -> str:
    return f"{type(e).__name__}: {e}".replace("\n", " ")[:300]


def _log(*args) -> None:
    print(time.strftime("%H:%M:%S"), *args, file=sys.stderr, flush=True)


def float_model(pattern: str, K, classes: int, xtr, ytr, loss):
    """The trained float model of a row. A backbone is first trained with a classifier on
    the task (no downloads: this stands in for its pretrained weights), then, as in Keras'
    recipe, frozen (``trainable = False``) under a new head trained for two epochs, and
    unfrozen for bit pruning (the recipe's fine-tuning stage; its BNs stay in inference mode)."""
    fit = dict(batch_size=FLAGS.batch_size, verbose=0)
    base = None
    if PATTERNS[pattern][0] == "images":
        which = "efficientnetb0" if pattern.endswith("efficientnetb0") else "mobilenetv2"
        base = backbone(K, which)
        inputs = K.Input((32, 32, 3))
        x = inputs if which == "efficientnetb0" else K.layers.Rescaling(1 / 127.5, offset=-1)(inputs)
        pretrain = K.Model(inputs, K.layers.Dense(classes)(K.layers.GlobalAveragePooling2D()(base(x))))
        pretrain.compile(K.optimizers.Adam(1e-3), loss)
        pretrain.fit(xtr, ytr, epochs=FLAGS.float_epochs, **fit)
        if pattern != "sequential_backbone":
            base.trainable = False
    model = build(pattern, K, classes, base)
    model.compile(K.optimizers.Adam(1e-3), loss)
    model.fit(xtr, ytr, epochs=2 if base is not None else FLAGS.float_epochs, **fit)
    if base is not None:  # the recipe's fine-tuning stage, which bit pruning is: the base unfrozen
        base.trainable = True
    return model


def others(pattern: str, kname: str, K, classes: int, xtr) -> dict:
    """Whether the Keras' own 8-bit quantization takes the model: tfmot's QAT under tf_keras,
    ``model.quantize("int8")`` under Keras 3."""
    try:
        model = build(pattern, K, classes)
        if kname == "tf_keras":
            import tensorflow_model_optimization as tfmot

            tfmot.quantization.keras.quantize_model(model)(xtr[:2], training=True)
        else:
            model.quantize("int8")
            model.predict(xtr[:2], verbose=0)
        return {"int8": "yes"}
    except Exception as e:  # noqa: BLE001 (reported)
        return {"int8": "no", "int8_error": _error(e)}


def schedule(pattern: str) -> dict:
    """The learning rates of a row: the backbone rows that unfreeze a frozen pretrained
    base use ``--backbone_lr`` and ``--backbone_bits_lr_multiplier`` (Keras' recipe fine-tunes an
    unfrozen base at a low rate: a high one wrecks its features on small data)."""
    if pattern.startswith(("recipe", "inline")):
        return {"lr": FLAGS.backbone_lr, "finetune_lr": FLAGS.backbone_lr / 5,
                "bits_lr_multiplier": FLAGS.backbone_bits_lr_multiplier}
    return {"lr": 1e-3, "finetune_lr": 2e-4, "bits_lr_multiplier": 10.0}


def float_same_schedule(model, K, loss, sched: dict, data) -> float:
    """Test accuracy of ``model`` (float) trained through the bit-pruned run's epochs and
    learning rates without bit pruning; its weights are restored afterwards."""
    xtr, ytr, xte, yte = data
    weights = model.get_weights()
    fit = dict(batch_size=FLAGS.batch_size, verbose=0)
    model.compile(K.optimizers.Adam(sched["lr"]), loss)
    model.fit(xtr, ytr, epochs=FLAGS.epochs, **fit)
    model.compile(K.optimizers.Adam(sched["finetune_lr"]), loss)
    model.fit(xtr, ytr, epochs=FLAGS.finetune_epochs, **fit)
    acc = accuracy(model, xte, yte)
    model.set_weights(weights)
    return acc


def run_ours(pattern, K, classes, data, workdir, seed: int = 0) -> dict:
    import tf_bitpruning as tfbp
    from benchmarks.common import agreement
    from tf_bitpruning import costs
    from tests.support.litert_run import run_file

    xtr, ytr, xte, yte = data
    loss = K.losses.SparseCategoricalCrossentropy(from_logits=True)
    result, stage = {}, "float training"
    try:
        model = float_model(pattern, K, classes, xtr, ytr, loss)
        result["float_accuracy"] = accuracy(model, xte, yte)
        sched = schedule(pattern)
        result.update(sched)
        stage = "float, same schedule"
        _log(pattern, stage)
        result["float_same_schedule_accuracy"] = float_same_schedule(model, K, loss, sched, data)
        K.utils.set_random_seed(seed)  # the bit-pruned run as without the float one
        stage = "bitprune_model"
        _log(pattern, stage)
        # (a MultiHeadAttention is expanded and bit-pruned: docs/export.md)
        bp = tfbp.bitprune_model(model, bits_lr_multiplier=sched["bits_lr_multiplier"])
        result["quantized_tensors"] = len(costs.quantized_tensors(bp))
        stage = "fit(BitBudget)"
        bp.compile(K.optimizers.Adam(sched["lr"]), loss)
        bp.fit(xtr, ytr, epochs=FLAGS.epochs, batch_size=FLAGS.batch_size, verbose=0,
               callbacks=[tfbp.BitBudget(FLAGS.target_bits)])
        result["learning_accuracy"] = accuracy(bp, xte, yte)
        stage = "freeze_bitlengths"
        frozen = tfbp.freeze_bitlengths(bp)
        result["avg_bits"] = round(tfbp.average_bits(frozen), 2)
        stage = "fit (fine-tune)"
        frozen.compile(K.optimizers.Adam(sched["finetune_lr"]), loss)
        frozen.fit(xtr, ytr, epochs=FLAGS.finetune_epochs, batch_size=FLAGS.batch_size, verbose=0)
        stage = "export_tflite"
        _log(pattern, stage)
        path = os.path.join(workdir, "ours.tflite")
        # Data calibrates only what no learned quantizer covers (LayerNorm statistics, recurrent states).
        tfbp.export_tflite(frozen, path, representative_dataset=xtr[:256])
        result["deployed_accuracy"] = accuracy(frozen, xte, yte)  # after export: the model in hand
        stage = "LiteRT"
        got, _ = run_file(path, xte)  # float images and rows, or token ids
        result.update(agreement(frozen.predict(xte, verbose=0, batch_size=256), got, FLAGS.tie_margin))
        result["tflite_accuracy"] = round(float((got.argmax(1) == yte).mean()), 4)
        result["ours"] = "yes" if result["agreement"] >= 0.99 else "disagrees"
    except Exception as e:  # noqa: BLE001 (reported)
        result.update(ours="no", ours_stage=stage, ours_error=_error(e))
        traceback.print_exc()
    return result


def run_one(spec: str) -> dict:
    from benchmarks.provenance import commit

    import tensorflow as tf

    pattern, kname, seed = (spec.split(":") + ["0"])[:3]
    seed = int(seed)
    K = keras_module(kname)
    tf.config.experimental.enable_op_determinism()  # TensorFlow's ops under either Keras
    K.utils.set_random_seed(seed)
    xtr, ytr, xte, yte, classes = task(PATTERNS[pattern][0])
    result = {"pattern": pattern, "keras": kname, "seed": seed, "commit": commit()}
    result.update(others(pattern, kname, K, classes, xtr))
    K.utils.set_random_seed(seed)
    with tempfile.TemporaryDirectory() as workdir:
        result.update(run_ours(pattern, K, classes, (xtr, ytr, xte, yte), workdir, seed))
    return result


# -- the table -------------------------------------------------------------------------------------

def table(results: dict, made_by: str) -> str:
    return pattern_table.table(results, made_by, os.path.basename(FLAGS.out),
                               {name: what for name, (_, what) in PATTERNS.items()}, KERASES)


def main(argv):
    del argv
    if FLAGS.one:
        print_row(run_one(FLAGS.one))
        return
    unknown = sorted(set(FLAGS.patterns) - set(PATTERNS)) + sorted(set(FLAGS.kerases) - set(KERASES))
    if unknown:
        raise SystemExit(f"unknown --patterns/--kerases: {unknown}; choose from {list(PATTERNS)}, {list(KERASES)}.")
    from benchmarks.provenance import command, stamp

    made_by = stamp()
    path = FLAGS.out + ".json"
    results = json.load(open(path)) if os.path.exists(path) else {}
    passed = [a for a in sys.argv[1:] if not a.startswith(("--patterns", "--kerases", "--out", "--one"))]
    for pattern in FLAGS.patterns:
        for kname in FLAGS.kerases:
            spec, runs, t0 = f"{pattern}:{kname}", [], time.time()
            for seed in range(FLAGS.seeds):
                run, stderr = row_in_subprocess(os.path.abspath(__file__), f"{spec}:{seed}", passed)
                runs.append(run or {"pattern": pattern, "keras": kname, "seed": seed, "ours": "no",
                                    "ours_stage": "crash", "ours_error": stderr[-300:].replace("\n", " ")})
            row = {"pattern": pattern, "keras": kname, "runs": runs,
                   "seconds": round(time.time() - t0), "command": command()}
            results[spec] = row
            print(f"{spec}: {json.dumps(row)}", flush=True)
            save_page(FLAGS.out, results, table(results, made_by))
    with open(FLAGS.out + ".md", "w") as f:  # also with no rows to run: the table of the json
        f.write(table(results, made_by))
    print(table(results, made_by))


if __name__ == "__main__":
    app.run(main)
