"""The end-to-end example under both Kerases: the digits table of docs/kerases.md.

Runs ``examples/bitprune_end_to_end.py --keras=3`` and ``--keras=2`` (digits, offline,
the example's defaults: 3-bit budget, seed 0) as subprocesses, one after the other,
``--runs`` times each, parses the summary lines each run prints (bits, accuracies, the
compression of the kernels, step times in ``fit``) and writes them side by side.

    python benchmarks/kerases.py                 # writes docs/kerases.md (a few minutes on 2 cores)
    python benchmarks/kerases.py --runs=2 --out=/tmp/kerases.md
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import tempfile
import time
from typing import Dict, List

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from absl import app, flags

flags.DEFINE_integer("runs", 1, "Runs of the example per Keras (bits and accuracies are listed per run).")
flags.DEFINE_list("args", [], "Extra arguments for the example, e.g. --args=--seed=1,--target_bits=2.5.")
flags.DEFINE_string("out", os.path.join(ROOT, "docs", "kerases.md"), "Markdown file the table is written to "
                    "(empty: print only).")
FLAGS = flags.FLAGS

KERASES = (("3", "Keras 3"), ("2", "tf_keras"))
NUMBER = r"([0-9.]+|nan)"
# What the example prints last (examples/bitprune_end_to_end.py and tfbp.summary of the frozen model).
PATTERNS = {
    "keras": r"^Keras: (.+)$",
    "bits": rf"^bits \((\w+)\): budget {NUMBER} \| learned {NUMBER} \| deployed {NUMBER}$",
    "kinds": rf"^Average bitlength per tensor: {NUMBER} \(weights {NUMBER}, activations {NUMBER}\)$",
    "kernels": rf"^Quantized kernels: .* float32 \({NUMBER}x smaller\)",
    "accuracy": rf"^accuracy: float {NUMBER} \| learning phase {NUMBER} \| frozen {NUMBER} \| fine-tuned {NUMBER}$",
    "steps": rf"^step time \(ms/step in fit, 10th percentile, batch (\d+)\): float {NUMBER} \| learning phase "
             rf"{NUMBER} \({NUMBER}x float\) \| fine-tune {NUMBER} \({NUMBER}x float\)$",
}


def parse(stdout: str) -> Dict[str, tuple]:
    """The groups of every summary line; a missing line is an error that shows the output."""
    found = {}
    for key, pattern in PATTERNS.items():
        matches = re.findall(pattern, stdout, re.MULTILINE)
        if not matches:
            raise RuntimeError(f"the example printed no '{key}' line; its output ends:\n{stdout[-3000:]}")
        found[key] = matches[-1] if isinstance(matches[-1], tuple) else (matches[-1],)
    return found


def run_example(keras: str) -> Dict[str, tuple]:
    with tempfile.TemporaryDirectory(prefix="kerases_") as out_dir:
        cmd = [sys.executable, os.path.join(ROOT, "examples", "bitprune_end_to_end.py"), f"--keras={keras}",
               f"--out_dir={out_dir}", *FLAGS.args]
        start = time.time()
        proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
        if proc.returncode:
            raise RuntimeError(f"{' '.join(cmd)} failed ({proc.returncode}):\n{proc.stderr[-3000:]}")
        print(f"--keras={keras}: {time.time() - start:.0f} s", flush=True)
        return parse(proc.stdout)


def joined(values: List[str]) -> str:
    """One value when every run gave it, else each run's, comma-separated."""
    return values[0] if len(set(values)) == 1 else ", ".join(values)


def table(results: Dict[str, List[Dict[str, tuple]]]) -> str:
    rows = [("bits ({}): budget / learned / deployed", lambda r: " / ".join(r["bits"][1:4])),
            ("weights / activations (deployed)", lambda r: f"{r['kinds'][1]} / {r['kinds'][2]}"),
            ("accuracy: float", lambda r: r["accuracy"][0]),
            ("accuracy: learning phase / frozen", lambda r: f"{r['accuracy'][1]} / {r['accuracy'][2]}"),
            ("accuracy: fine-tuned", lambda r: r["accuracy"][3]),
            ("kernels vs float32", lambda r: f"{float(r['kernels'][0]):.1f}× smaller"),
            ("step in `fit`, ms (batch {}): float", lambda r: r["steps"][1]),
            ("learning phase (× its float step)", lambda r: f"{r['steps'][2]} ({r['steps'][3]}×)"),
            ("fine-tune at frozen bitlengths (× its float step)", lambda r: f"{r['steps'][4]} ({r['steps'][5]}×)")]
    first = next(iter(results.values()))[0]
    lines = ["| | " + " | ".join(name for _, name in KERASES) + " |", "|---|" + "---|" * len(KERASES)]
    for label, cell in rows:
        label = label.format(first["bits"][0] if label.startswith("bits") else first["steps"][0])
        lines.append(f"| {label} | " + " | ".join(joined([cell(r) for r in results[k]]) for k, _ in KERASES) + " |")
    return "\n".join(lines) + "\n"


def page(made_by: str, results) -> str:
    said = "; ".join(f"`--keras={k}`: {joined([r['keras'][0] for r in results[k]])}" for k, _ in KERASES)
    extra = f" {' '.join(FLAGS.args)}" if FLAGS.args else ""
    return (f"# Digits numbers for both Kerases\n\n{made_by}\n\n"
            f"`python examples/bitprune_end_to_end.py --keras=3{extra}` and `--keras=2{extra}` (digits, 3-bit "
            f"budget unless set otherwise, seed 0), {FLAGS.runs} run(s) each, one after the other ({said}). "
            "A cell lists every run's value where they differ.\n\n" + table(results) + "\n"
            "The two Kerases initialize and shuffle differently (same seed, other random streams), so the float "
            "models differ and so do the bitlengths learned from them. A step time is the wall time from one "
            "training step's end to the next within a `fit` (callbacks included: `BitBudget` measures the "
            "average every batch), first epoch and each epoch's first step left out, 10th percentile (other "
            "load only adds time); on a shared machine compare the ratios, not the milliseconds.\n")


def main(argv):
    del argv
    from benchmarks.provenance import stamp

    made_by = stamp()  # the code that runs is the code at this commit
    results = {k: [] for k, _ in KERASES}
    for _ in range(FLAGS.runs):
        for keras, _ in KERASES:
            results[keras].append(run_example(keras))
    text = page(made_by, results)
    print(text)
    if FLAGS.out:
        with open(FLAGS.out, "w") as f:
            f.write(text)
        print(f"wrote {FLAGS.out}")


if __name__ == "__main__":
    app.run(main)
