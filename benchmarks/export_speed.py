"""Size and LiteRT latency of exported MobileNetV2 files against tfmot's int8 file.

MobileNetV2 (alpha 1.0, 224x224, ``weights=None``: random weights, no download).
tfmot's 8-bit QAT model (``quantize_model``) and ours (``bitprune_model``) are
calibrated on a few batches of random inputs (forward passes in training mode,
which is what sets the activation ranges; no training is needed to measure
speed and size), then every kernel of ours is frozen at 2, 4 or 8 bits with
activations at 8 (as tests/conftest.py::train_frozen sets bitlengths) and
exported with ``int4="auto"`` (the default), ``True`` and ``False``, and
``fine_bias`` on and off. A 4-bit-activation row shows what ``fine_bias``
costs where it adds QUANTIZE ops (it adds none for 8-bit activations).

Every file is timed with LiteRT's default resolver (XNNPACK) at 1 and 2 threads
in the same run, interleaved (one invoke of each file per round, in a shuffled
order, so load from other processes hits them alike): the median invoke time and
the median of the per-round ratios to tfmot's file over ``--invokes`` rounds.

    python benchmarks/export_speed.py --per_op     # docs/export_speed.md, with INT4 per op type (FAST_INT4_OPS)
    python benchmarks/export_speed.py              # without the per-op rows (about 5 minutes on 2 cores)
"""

from __future__ import annotations

import json
import os
import sys
import tempfile
import time
from typing import Dict, List, Sequence, Tuple

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from absl import app, flags

flags.DEFINE_list("bits", ["2", "4", "8"], "Kernel bitlengths to export (activations at 8).")
flags.DEFINE_list("threads", ["1", "2"], "LiteRT thread counts.")
flags.DEFINE_integer("invokes", 101, "Timed invokes per file and thread count (medians are reported).")
flags.DEFINE_integer("size", 224, "Input height and width.")
flags.DEFINE_integer("calibration_batches", 3, "Random batches (of 8) that set the activation ranges.")
flags.DEFINE_bool("per_op", False, "Also time INT4 per op type (4-bit kernels, int4_ops=(op,)).")
flags.DEFINE_bool("fine_bias_row", True, "Add 4-bit kernels and activations, fine_bias on and off.")
flags.DEFINE_string("out_dir", None, "Where to keep the .tflite files (default: a temporary directory).")
flags.DEFINE_bool("time_only", False, "Only time the files an earlier run left in --out_dir (files.json).")
flags.DEFINE_string("out", os.path.join(ROOT, "docs", "export_speed.md"), "Markdown file the tables are written "
                    "to (empty: print only).")
FLAGS = flags.FLAGS


def mobilenet_v2(seed: int = 0):
    import tf_keras as keras

    keras.utils.set_random_seed(seed)
    return keras.applications.MobileNetV2(weights=None, input_shape=(FLAGS.size, FLAGS.size, 3),
                                          classifier_activation=None)


def calibration_batches() -> List:
    import numpy as np

    rng = np.random.default_rng(0)
    return [rng.uniform(-1.0, 1.0, (8, FLAGS.size, FLAGS.size, 3)).astype(np.float32)
            for _ in range(FLAGS.calibration_batches)]


def calibrate(model, batches) -> None:
    """Forward passes in training mode: tfmot's and our activation ranges follow them."""
    for x in batches:
        model(x, training=True)


def tfmot_int8(path: str, batches) -> None:
    import tensorflow as tf
    import tensorflow_model_optimization as tfmot

    q = tfmot.quantization.keras.quantize_model(mobilenet_v2())
    calibrate(q, batches)
    # As from_keras_model, without its SavedModel round trip (minutes for MobileNetV2).
    fn = tf.function(lambda x: q(x, training=False),
                     input_signature=[tf.TensorSpec([1] + list(q.input_shape[1:]), tf.float32)])
    converter = tf.lite.TFLiteConverter.from_concrete_functions([fn.get_concrete_function()], q)
    converter.optimizations = [tf.lite.Optimize.DEFAULT]
    with open(path, "wb") as f:
        f.write(converter.convert())


def frozen_at(bp, weight_bits: int, activation_bits: int):
    """A frozen copy of the calibrated bit-pruned model at the given bitlengths."""
    import tensorflow as tf

    import tf_bitpruning as tfbp
    from tf_bitpruning import costs

    for t in costs.quantized_tensors(bp):
        b = weight_bits if t.kind == "weights" else activation_bits
        t.bits_variable.assign(tf.fill(t.bits_variable.shape, b / t.quantizer.bits_lr_multiplier))
    return tfbp.freeze_bitlengths(bp)


def variants() -> List[Tuple[str, int, int, Dict]]:
    """(label, weight bits, activation bits, export_tflite options) of every file."""
    rows = []
    for b in (int(v) for v in FLAGS.bits):
        modes = [("auto", {}), ("True", {"int4": True}), ("False", {"int4": False})] if b <= 4 else [("auto", {})]
        for mode, kw in modes:
            rows.append((f"W{b}A8 int4={mode}", b, 8, kw))
        rows.append((f"W{b}A8 int4=auto fine_bias=False", b, 8, {"fine_bias": False}))
    if FLAGS.fine_bias_row:
        rows.append(("W4A4 int4=auto", 4, 4, {}))
        rows.append(("W4A4 int4=auto fine_bias=False", 4, 4, {"fine_bias": False}))
    if FLAGS.per_op:
        for op in ("CONV_2D", "DEPTHWISE_CONV_2D", "FULLY_CONNECTED"):
            rows.append((f"W4A8 int4_ops=({op},)", 4, 8, {"int4": True, "int4_ops": (op,)}))
    return rows


def op_counts(path: str) -> Dict[str, int]:
    """INT4 filters and QUANTIZE ops of a file (the first and last QUANTIZE/DEQUANTIZE are I/O)."""
    from tf_bitpruning.export._compat import schema
    from tf_bitpruning.export.flatbuffer import op_name, read

    with open(path, "rb") as f:
        m = read(f.read())
    sg = m.subgraphs[0]
    names = [op_name(m, op) for op in sg.operators]
    return {"int4": sum(t.type == schema.TensorType.INT4 for t in sg.tensors),
            "quantize": names.count("QUANTIZE")}


def latencies(paths: Sequence[str], threads: Sequence[int], invokes: int, ref: str
              ) -> Dict[Tuple[str, int], Tuple[float, float]]:
    """(median invoke ms, median ratio to ``ref``) of every file at every thread count.

    Interleaved: each round invokes every file once, in a shuffled order, so load from
    other processes hits all alike; the ratio is taken within each round (against the
    reference's invoke of the same round), which cancels slow changes in that load.
    """
    import numpy as np
    from ai_edge_litert.interpreter import Interpreter

    rng = np.random.default_rng(0)
    runners = {}
    for path in paths:
        for n in threads:
            it = Interpreter(model_path=path, num_threads=n)
            it.allocate_tensors()
            d = it.get_input_details()[0]
            it.set_tensor(d["index"], rng.uniform(-1, 1, d["shape"]).astype(d["dtype"]))
            for _ in range(3):
                it.invoke()
            runners[path, n] = it
    keys = list(runners)
    times: Dict[Tuple[str, int], List[float]] = {key: [] for key in keys}
    for _ in range(invokes):
        for i in rng.permutation(len(keys)):
            start = time.perf_counter()
            runners[keys[i]].invoke()
            times[keys[i]].append(time.perf_counter() - start)
    result = {}
    for (path, n), t in times.items():
        ratio = np.asarray(t) / np.asarray(times[ref, n])
        result[path, n] = (1e3 * float(np.median(t)), float(np.median(ratio)))
    return result


def build_files(out: str, start: float) -> Dict[str, str]:
    """Exports tfmot's int8 file and every variant of ours; label -> path."""
    import tf_bitpruning as tfbp

    batches = calibration_batches()
    files = {"tfmot int8 (8-bit QAT)": os.path.join(out, "tfmot_int8.tflite")}
    tfmot_int8(files["tfmot int8 (8-bit QAT)"], batches)
    print(f"tfmot int8 file built ({time.time() - start:.0f} s)", flush=True)

    bp = tfbp.bitprune_model(mobilenet_v2())
    calibrate(bp, batches)
    frozen = {}
    for i, (label, wb, ab, kw) in enumerate(variants()):
        if (wb, ab) not in frozen:
            frozen.clear()  # one frozen copy at a time keeps memory low
            frozen[wb, ab] = frozen_at(bp, wb, ab)
        path = os.path.join(out, f"ours_{i:02d}.tflite")
        tfbp.export_tflite(frozen[wb, ab], path, **kw)
        files[label] = path
        print(f"{label}: exported ({time.time() - start:.0f} s)", flush=True)
    return files


def markdown_table(rows: List[List[str]]) -> str:
    return "\n".join(["| " + " | ".join(rows[0]) + " |", "|" + "|".join("---" for _ in rows[0]) + "|"]
                     + ["| " + " | ".join(row) + " |" for row in rows[1:]]) + "\n"


def page(made_by: str, title: str, head: List[str], rows: List[List[str]], ref_ms: Dict[int, str]) -> str:
    """docs/export_speed.md: provenance, what was measured, the table and the per-op table."""
    main_rows = [r for r in rows if "int4_ops" not in r[0]]
    per_op = [r for r in rows if "int4_ops" in r[0]]
    text = (f"# Export speed and size\n\n{made_by}\n\n"
            f"MobileNetV2 (alpha 1.0, {FLAGS.size}×{FLAGS.size}, random weights), tfmot 8-bit QAT and ours "
            f"calibrated on {FLAGS.calibration_batches} random batches (forward passes in training mode set the "
            "activation ranges; no training is needed to measure speed and size), every kernel of ours frozen at "
            f"{'/'.join(FLAGS.bits)} bits, activations at 8 (4 in the `W4A4` rows), exported with "
            "`export_tflite(int4=..., fine_bias=...)` as labelled. LiteRT default resolver (XNNPACK), "
            f"{FLAGS.invokes} interleaved invokes per file (one invoke of each file per round, shuffled): the "
            "median ms and the median of the per-round ratios to tfmot's file. One run on a shared machine: "
            "the ratios, taken within each round, are steadier than the milliseconds, and the 1-thread column "
            f"steadier than the 2-thread one.\n\n{title}\n\n" + markdown_table([head] + main_rows))
    if per_op:
        text += ("\n## INT4 per op type\n\n"
                 "4-bit kernels, activations at 8, INT4 only for the named op type (`int4_ops=(op,)`), in the same "
                 f"run as the table above (its tfmot file: {', '.join(f'{ms} ms at {n} thread(s)' for n, ms in ref_ms.items())}). "
                 "This is how `FAST_INT4_OPS` (the ops `int4=\"auto\"` packs) was chosen.\n\n"
                 + markdown_table([head] + per_op))
    return text


def main(argv) -> None:
    del argv
    from benchmarks.provenance import stamp

    made_by = stamp()  # the code that runs is the code at this commit
    out = FLAGS.out_dir or tempfile.mkdtemp(prefix="export_speed_")
    os.makedirs(out, exist_ok=True)
    threads = [int(t) for t in FLAGS.threads]
    start = time.time()
    if FLAGS.time_only:
        with open(os.path.join(out, "files.json")) as f:
            files = json.load(f)
    else:
        files = build_files(out, start)
        with open(os.path.join(out, "files.json"), "w") as f:
            json.dump(files, f, indent=1)

    ref = files["tfmot int8 (8-bit QAT)"]
    times = latencies(list(files.values()), threads, FLAGS.invokes, ref)
    ref_size = os.path.getsize(ref)
    head = ["file", "MB", "size/tfmot", "INT4 filters", "QUANTIZE ops"]
    for n in threads:
        head += [f"ms @{n}T", f"latency/tfmot @{n}T"]
    rows = []
    for label, path in files.items():
        counts = op_counts(path)
        row = [label, f"{os.path.getsize(path) / 1e6:.2f}", f"{os.path.getsize(path) / ref_size:.2f}",
               str(counts["int4"]), str(counts["quantize"])]
        for n in threads:
            row += [f"{times[path, n][0]:.2f}", f"{times[path, n][1]:.2f}"]
        rows.append(row)
    title = (f"MobileNetV2 {FLAGS.size}x{FLAGS.size}, LiteRT default resolver, {FLAGS.invokes} interleaved "
             f"invokes per file: median ms, median of the per-round ratios to tfmot "
             f"({time.time() - start:.0f} s in all).")
    print(f"\n{title} Files in {out}\n")
    print(markdown_table([head] + rows))
    if FLAGS.out:
        ref_ms = {n: f"{times[ref, n][0]:.2f}" for n in threads}
        with open(FLAGS.out, "w") as f:
            f.write(page(made_by, title, head, rows, ref_ms))
        print(f"wrote {FLAGS.out}")


if __name__ == "__main__":
    app.run(main)
