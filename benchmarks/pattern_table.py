"""The patterns page (benchmarks/patterns.py): each row's seeds as mean ± std, the claim
"deployed within 1 point of float" and the rows that miss it.

    >>> run = {"float_accuracy": 0.9, "deployed_accuracy": 0.85, "ours": "yes"}
    >>> claim({"a:tf_keras": {"pattern": "a", "keras": "tf_keras", "runs": [run]}}, {"a": "row A"})
    'Rows whose deployed accuracy is more than 1 point under float (mean over the seeds): row A under tf_keras (-5.0 points).'
"""

from __future__ import annotations

from typing import Dict, Sequence


def _runs(r: dict) -> list:
    """A row's runs, one per seed (a row of a run before ``--seeds``: itself)."""
    return r.get("runs") or [r]


def _stat(runs, key, scale: float = 100.0) -> str:
    """``mean ± std`` of ``key`` over the runs that have it (std over seeds, ddof 1)."""
    import numpy as np

    v = [x[key] for x in runs if isinstance(x.get(key), (int, float)) and x[key] == x[key]]
    if not v:
        return "–"
    v = scale * np.asarray(v, dtype=float)
    return f"{v.mean():.1f}" + (f" ± {v.std(ddof=1):.1f}" if len(v) > 1 else "")


def _ours(runs) -> str:
    failed = [x for x in runs if x.get("ours") != "yes"]
    if not failed:
        return "yes"
    first = failed[0]
    what = f"no ({first.get('ours_stage')})" if first.get("ours") == "no" else first.get("ours", "–")
    return what + (f" ({len(failed)} of {len(runs)} seeds)" if len(runs) > 1 else "")


def _row(what: str, kname: str, r: dict) -> str:
    runs = _runs(r)
    for x in runs:  # deployed minus float, per seed
        if "deployed_accuracy" in x and "float_accuracy" in x:
            x["_delta"] = x["deployed_accuracy"] - x["float_accuracy"]
    bits = [x["avg_bits"] for x in runs if "avg_bits" in x]
    decided = [x["confident"] for x in runs if "confident" in x]
    agree = f"{_stat(runs, 'agreement')} ({min(decided)})" if decided else "–"
    rate = f"{runs[0].get('lr', 1e-3):g} (×{runs[0].get('bits_lr_multiplier', 10.0):g})"  # before --seeds: 1e-3, ×10
    cells = [what, kname, str(len(runs)), rate, runs[0].get("int8", "–"), _ours(runs),
             str(runs[0].get("quantized_tensors", "–")), str(max(bits)) if bits else "–",
             _stat(runs, "float_accuracy"), _stat(runs, "float_same_schedule_accuracy"), _stat(runs, "learning_accuracy"),
             _stat(runs, "deployed_accuracy"), _stat(runs, "_delta"), _stat(runs, "tflite_accuracy"), agree]
    for x in runs:
        x.pop("_delta", None)
    return "| " + " | ".join(cells) + " |"


def table(results: dict, made_by: str, json_name: str, patterns: Dict[str, str],
          kerases: Sequence[str]) -> str:
    """The page: ``made_by``, the rows of ``results`` (``"pattern:keras"`` -> row) in the order
    of ``patterns`` (name -> what the row is) and ``kerases``, the claim and the errors."""
    commits = sorted({x.get("commit", "unknown") for r in results.values() for x in _runs(r)})
    commands = sorted({r["command"] for r in results.values() if r.get("command")})
    head = (f"{made_by} Every row ran at commit {', '.join(commits)} (its `commit` in "
            f"`{json_name}.json`), made by "
            + ", ".join(f"`{c}`" for c in commands) + ".\n\n"
            "Accuracies in %, mean ± std over the seeds (each seed reruns the whole row, op determinism "
            "on). *float*: the model the user starts from; *float, same schedule*: it trained through "
            "the same epochs and learning rates without bit pruning; *learning phase*: the bit-pruned model "
            "after `fit(BitBudget)`; *deployed*: bit-pruned to the "
            "budget, frozen, fine-tuned (at a fifth of the Adam lr); *deployed − float* in points; *avg bits*: the largest over "
            "the seeds; agreement: the `.tflite` file's top-1 with Keras on decided inputs (fewest "
            "decided over the seeds in parentheses). A row with no *float, same schedule* ran before "
            "`--seeds`: one unseeded run without op determinism.\n\n"
            "| pattern | Keras | seeds | Adam lr (bits_lr_multiplier) | Keras' int8 (tfmot QAT / `model.quantize`) | ours | quantized tensors "
            "| avg bits | float | float, same schedule | learning phase | deployed | deployed − float | `.tflite` "
            "| agreement (decided) |\n"
            "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|\n")
    rows, errors = [], []
    for pattern, what in patterns.items():
        for kname in kerases:
            r = results.get(f"{pattern}:{kname}")
            if r is None:
                continue
            rows.append(_row(what, kname, r))
            first = _runs(r)[0]
            errors += [f"- {pattern} ({kname}), {k.split('_')[0]}: {x[k]}" for k in ("int8_error",)
                       if (x := first).get(k)]
            errors += [f"- {pattern} ({kname}, seed {x.get('seed', 0)}), ours: {x['ours_error']}"
                       for x in _runs(r) if x.get("ours_error")]
    return (head + "\n".join(rows) + "\n\n" + claim(results, patterns)
            + ("\n\nErrors:\n\n" + "\n".join(errors) if errors else "") + "\n")


def claim(results: dict, patterns: Dict[str, str]) -> str:
    """The claim "deployed within 1 point of float (mean over the seeds)", and the rows that miss it."""
    import numpy as np

    missed = []
    for spec, r in results.items():
        d = [x["deployed_accuracy"] - x["float_accuracy"] for x in _runs(r)
             if "deployed_accuracy" in x and "float_accuracy" in x]
        if not d or np.mean(d) < -0.01:
            what = "did not finish" if not d else f"{100 * np.mean(d):+.1f} points"
            missed.append(f"{patterns.get(r.get('pattern'), spec)} under {r.get('keras')} ({what})")
    if not missed:
        return "Every row's deployed accuracy is within 1 point of its float accuracy (or above it), mean over the seeds."
    return ("Rows whose deployed accuracy is more than 1 point under float (mean over the seeds): "
            + "; ".join(missed) + ".")
