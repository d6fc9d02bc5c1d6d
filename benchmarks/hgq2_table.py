"""HGQ2 against our recipe, seed by seed, from the JSON the benchmarks wrote (no training).

Reads ``benchmarks/hgq2_compare.py``'s pages (HGQ2 at each β, and its float control) and
``benchmarks/compare.py``'s (ours: float, deployed accuracy, bits per tensor, and the average
without the output's tensor, which HGQ2 leaves unquantized) and writes one table per task:

    python benchmarks/hgq2_table.py        # writes docs/hgq2_vs_ours.md
"""

from __future__ import annotations

import json
import os
import sys
from collections import defaultdict

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

# task: (hgq2_compare.py pages, [(compare.py page, its first seed, a note for options its labels omit
#                                 [, the label of its float row where the float trained otherwise])])
SOURCES = {
    "digits": (["hgq2_compare_digits_1e-8", "hgq2_compare_digits_3e-8", "hgq2_compare_digits_3e-8_seeds3to5",
                "hgq2_compare_digits",
                "hgq2_compare_digits_seeds3to5", "hgq2_compare_digits_float"],
               [("comparison_levers_long", 0, ""), ("comparison_levers_long_seeds3to5", 3, ""),
                ("comparison_levers_long_clip", 0, ""),
                ("comparison_allocate_digits", 0, ""), ("comparison_allocate_digits_seeds3to5", 3, ""),
                ("comparison_allocate_digits_3", 0, ""), ("comparison_allocate_digits_3_seeds3to5", 3, ""),
                ("comparison_float_output_digits", 0, "", "float (compare.py: 20 epochs, the float-output page's run)")]),
    "breast_cancer": (["hgq2_compare_mlp", "hgq2_compare_mlp_6seeds", "hgq2_compare_mlp_1e-6_seeds3to5"],  # seeds 0-2 of β 1e-5 repeat to the digit
                      [("comparison_levers_mlp_long_cos", 0, ""), ("comparison_levers_mlp_long_cos_seeds3to5", 3, ""),
                       ("comparison_levers_mlp_long_cos_3.25", 0, ""), ("comparison_levers_mlp_long_cos_4", 0, ""),
                       ("comparison_levers_mlp_long_cos_4_seeds3to5", 3, ""),
                       ("comparison_levers_mlp_hgq2", 0, ""), ("comparison_levers_mlp_hgq2_seeds3to5", 3, ""),
                       ("comparison_levers_mlp_hgq2_lr3e-4", 0, ", fine-tuning from 3e-4"),
                       ("comparison_allocate_mlp", 0, ""), ("comparison_allocate_mlp_seeds3to5", 3, ""),
                       ("comparison_allocate_mlp_3.25", 0, ""), ("comparison_allocate_mlp_4", 0, ""),
                       ("comparison_float_output_mlp", 0, ""), ("comparison_float_output_mlp_3.25_4", 0, ""),
                       ("comparison_levers_mlp_per_channel", 0, ""), ("comparison_levers_mlp_per_channel_seeds3to5", 3, ""),
                       *((page, first, ", float trained as HGQ2's control", "float (compare.py: 150 epochs, cosine from 3e-3)")
                         for page, first in (("comparison_levers_mlp_float150", 0),
                                             ("comparison_levers_mlp_float150_seeds3to5", 3)))]),
}


def _load(name):
    with open(os.path.join(ROOT, "docs", name + ".json")) as f:
        return json.load(f)


def _rows(task):
    """label -> seed -> (top-1, bits per tensor, bits without the output's or None)."""
    hgq2_pages, our_pages = SOURCES[task]
    rows = defaultdict(dict)
    for page, first, note, *float_label in our_pages:  # a page whose float trained otherwise names it
        seen = defaultdict(int)
        for run in _load(page)["bitpruning_runs"][task]:
            seed = first + seen[run["method"]]
            seen[run["method"]] += 1
            rows[float_label[0] if float_label else "float (compare.py: 20 epochs)"][seed] = (run["float_top1"], 32.0, None)
            rows["ours: " + run["method"][len("BitPruning "):] + note][seed] = (
                run.get("tflite_top1", run["top1"]), run["uniform_avg_bits"], run.get("bits_no_output"))
    for page in hgq2_pages:
        for run in _load(page):
            label = ("float (HGQ2's training, plain Keras layers)" if run["beta"] is None
                     else f"HGQ2 β = {run['beta']:g}")
            rows[label][run["seed"]] = (run["top1"], run["avg_bits"], None)
    return rows


def _span(values):
    values = [v for v in values if v is not None]
    if not values:
        return "—"
    low, high = min(values), max(values)
    return f"{low:.2f}" if high - low < 0.005 else f"{low:.2f}–{high:.2f}"


def table(task):
    """The markdown table of one task."""
    import numpy as np

    rows = _rows(task)
    seeds = sorted({s for by_seed in rows.values() for s in by_seed})
    lines = [f"### {task}", "", "| run | bits per tensor | without the output's | "
             + " | ".join(f"seed {s}" for s in seeds) + " | mean ± std |",
             "|---|---|---|" + "---|" * len(seeds) + "---|"]
    for label, by_seed in rows.items():
        accs = [100 * by_seed[s][0] for s in seeds if s in by_seed]
        cells = [f"{100 * by_seed[s][0]:.2f}" if s in by_seed else "—" for s in seeds]
        lines.append(f"| {label} | {_span([v[1] for v in by_seed.values()])} | "
                     f"{_span([v[2] for v in by_seed.values()])} | " + " | ".join(cells)
                     + f" | {np.mean(accs):.2f} ± {np.std(accs):.2f} ({len(accs)}) |")
    return "\n".join(lines + [""])


def main():
    from benchmarks.provenance import stamp

    text = [stamp(), "", "Deployed top-1 % per seed (ours: frozen, fine-tuned, the `.tflite` in LiteRT, which scores what the "
            "Keras model does except where a float output's 8-bit calibration turns a near-tie; HGQ2: after `trace_minmax`), "
            "bits per tensor as each page counts them; the pages: "
            + ", ".join(f"[{p}]({p}.md)" for hgq2, ours in SOURCES.values() for p in hgq2 + [o for o, *_ in ours])
            + ".", ""] + [table(task) for task in SOURCES]
    path = os.path.join(ROOT, "docs", "hgq2_vs_ours.md")
    with open(path, "w") as f:
        f.write("\n".join(text))
    print("\n".join(text))


if __name__ == "__main__":
    main()
