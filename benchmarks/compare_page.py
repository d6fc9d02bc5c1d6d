"""The page of benchmarks/compare.py: aggregation over seeds, tables and plot (no flags,
so tests import it)."""

from __future__ import annotations

from absl.app import UsageError


def aggregate(per_seed: list) -> list:
    """Per method, the mean over seeds of every number (and top-1's std); steps and latency
    as ratios to tfmot 8-bit QAT."""
    import numpy as np

    out = []
    for i, first in enumerate(per_seed[0]):
        runs = [rows[i] for rows in per_seed]
        row = {"method": first["method"]}
        for key in first:
            if key != "method" and not isinstance(first[key], dict):  # tensor_bits stay per seed
                values = np.array([r[key] for r in runs], float)
                row[key] = float(np.nanmean(values)) if np.isfinite(values).any() else float("nan")
                if key == "top1":
                    row["top1_std"] = float(values.std())
        out.append(row)
    ref = next(r for r in out if r["method"] == "tfmot 8-bit QAT")
    for r in out:
        r["step_vs_qat8"] = r["step_s"] / ref["step_s"]
        r["latency_vs_int8"] = r["latency_s"] / ref["latency_s"]
    return out


def markdown(results: dict, seeds: int) -> str:
    """The per-task tables of the aggregated rows."""
    lines = []
    for task, rows in results.items():
        lines += [f"### {task} ({seeds} seed(s))", "",
                  "| method | top-1 % | avg weight bits | avg act. bits | weight kB | MBOPs | step / tfmot8 | .tflite bytes | latency / int8 |",
                  "|---|---|---|---|---|---|---|---|---|"]
        for r in rows:
            lines.append(
                f"| {r['method']} | {100 * r['top1']:.2f} ± {100 * r['top1_std']:.2f} | {r['weight_bits']:.2f} | "
                f"{r['activation_bits']:.2f} | {r['weight_kb']:.2f} | {r['bops_m']:.2f} | {r['step_vs_qat8']:.2f} | "
                f"{r['tflite_bytes']:.0f} | {r['latency_vs_int8']:.2f} |")
        lines.append("")
    return "\n".join(lines)


def _percent(value):
    """A held-out accuracy in %, or — where fine-tuning held nothing out."""
    return "—" if value is None else f"{100 * value:.2f}"


def runs_markdown(runs: dict, first_seed: int, per_seed: int) -> str:
    """Per seed: the accuracy at each stage of BitPruning and the bits it ran at
    (``per_seed``: BitPruning and Uniform runs per seed, in the order they ran)."""
    lines = ["", "### BitPruning (and Uniform) per seed: float → learning phase → frozen → deployed (fine-tuned)", "",
             "| task | seed | budget | float % | learning % (bits) | frozen % | deployed % (bits) | .tflite % "
             "| bits without the output's | fine-tuning's held-out sixth % |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for task, rows in runs.items():
        for i, r in enumerate(rows):
            seed = first_seed + i // max(1, per_seed)
            lines.append(f"| {task} | {seed} | {r['method']} | {100 * r['float_top1']:.2f} | "
                         f"{100 * r['learn_top1']:.2f} ({r['learn_bits']:.2f}) | {100 * r['frozen_top1']:.2f} | "
                         f"{100 * r['top1']:.2f} ({r['deployed_bits']:.2f}) | {100 * r['tflite_top1']:.2f} | "
                         f"{r['bits_no_output']:.2f} | {_percent(r.get('holdout_top1'))} |")
    return "\n".join(lines + [""])


def _plot_bits(row, weighting):
    """The x of a row: its memory-weighted weight bits, or under a memory/bops budget
    the deployed average in that weighting (uniform n-bit QAT: n either way)."""
    if weighting == "uniform":
        return row["weight_bits"]
    return row.get("deployed_bits", row["weight_bits"])


def family(row: dict) -> str:
    """A row's curve: tfmot, or BitPruning / Uniform (the fixed lever) with its options (the budget left out)."""
    method = row["method"]
    if method.startswith("tfmot"):
        return "tfmot"
    return method.split(" ")[0] + (method[method.index(" ("):] if " (" in method else "")


def plot(results: dict, path: str, weighting: str) -> None:
    """Top-1 against bits, one curve per family of rows."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(results), figsize=(6 * len(results), 4.5), squeeze=False)
    for ax, (task, rows) in zip(axes[0], results.items()):
        families = ["tfmot"] + list(dict.fromkeys(family(r) for r in rows if "deployed_bits" in r))
        for curve, marker in zip(families, "soD^vPX<>"):
            sel = sorted((r for r in rows if family(r) == curve and r["weight_bits"] <= 8),
                         key=lambda r: r["weight_bits"])
            if sel:
                ax.errorbar([_plot_bits(r, weighting) for r in sel], [100 * r["top1"] for r in sel],
                            yerr=[100 * r["top1_std"] for r in sel], marker=marker, ls="--" if curve == "tfmot" else "-",
                            label=curve + (" (uniform n-bit QAT)" if curve == "tfmot" else ""))
        float_row = next(r for r in rows if r["method"] == "float32")
        ax.axhline(100 * float_row["top1"], color="gray", ls=":", label="float32")
        ax.set_xlabel("average weight bits (memory-weighted)" if weighting == "uniform" else
                      f"deployed average bits ({weighting}-weighted, weights and activations)")
        ax.set_ylabel("top-1 %")
        ax.set_title(task)
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


# The --levers of compare.py: name -> the words its rows carry.
LEVERS = {"range": "learned range", "clip": "learned clip", "distill": "distill", "long": "3x fine-tuning",
          "fixed": "fixed bits", "allocate": "allocated start", "float_output": "float output"}


def levers(entry: str) -> list:
    """The lever names of one ``--levers`` entry (``default``: none)."""
    names = [] if entry == "default" else entry.split("+")
    bad = set(names) - set(LEVERS)
    if bad:
        raise UsageError(f"--levers: unknown lever(s) {sorted(bad)} in {entry!r}; use default or "
                         f"'+'-joined {sorted(LEVERS)}.")
    if {"fixed", "allocate"} <= set(names):
        raise UsageError(f"--levers: {entry!r} joins fixed (no bitlength moves) and allocate (sets the "
                         "bitlengths); use one of them.")
    return names
