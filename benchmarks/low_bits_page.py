"""The page of ``benchmarks/low_bits.py`` (the families at 4 bits), apart from its flags:
plain functions of the rows and the options, so tests import them without defining flags."""

from __future__ import annotations

from typing import Optional, Sequence


def _pct(r, key) -> str:
    return f"{100 * r[key]:.1f}" if r.get(key) is not None else "–"


def _init(r) -> str:
    if r.get("allocate"):
        return "allocated"
    return "8 (top)" if r.get("init_bits") is None else f"{r['init_bits']:g}"


def _start(r) -> str:
    return "float model" if r.get("start") == "float" else "initial weights"


def row_key(name: str, row: dict, keras: str, target_bits: float, activation_range: str, weight_clip: str,
            init_bits: Optional[float], start: str = "init", allocate: bool = False,
            lr_factor: float = 1.0) -> str:
    """The row's key in the json: rows under other options or schedules stay."""
    init = "" if init_bits is None else f" init{init_bits:g}"
    init += ("" if start == "init" else f" from-{start}") + (" allocate" if allocate else "")
    init += "" if lr_factor == 1.0 else f" lr×{lr_factor:g}"
    return (f"{name} {keras} {target_bits:g} {activation_range} {weight_clip} "
            f"{row.get('steps')}+{row.get('finetune_steps')}{init}")


def table(results: dict, made_by: str, families: Sequence[str], within: float, json_name: str,
          batch_size: int, target_bits: float) -> str:
    """The page: one row per run, each row's command, and the ``families`` with no row."""
    commits = sorted({r.get("commit", "unknown") for r in results.values()})
    head = (f"{made_by} Every row ran at commit {', '.join(commits)} (its `commit` in "
            f"`{json_name}`, with its options and schedule).\n\n"
            "Float: the same network from the same initial weights, trained for the learning and "
            "fine-tuning steps together at the same learning rates. Bit pruning starts from those "
            "initial weights (both train from scratch) or from the trained float model (the user's "
            "workflow: quantizing a trained network; the bit-pruning run then trains as many steps "
            "again; \"float, as long again\" is the float model trained those steps too, at the same rates, "
            "which is what the extra steps alone do; the drop is from the float model it started from). Initial bits \"allocated\": `allocate_bitlengths(bp, target_bits, 128 training "
            "inputs)` before the learning phase. Deployed: the `.tflite` in LiteRT "
            "on the test set, frozen at the budget (`freeze_bitlengths(target_bits=...)`). Schedule: "
            "Adam at the family's rate (1e-3; VGG16 1e-4) for the learning steps under "
            "`BitBudget(target_bits)`, then the fine-tuning steps at a fifth of it, batches of "
            f"{batch_size}; the learning phase and frozen columns are the Keras model on the test "
            "set before fine-tuning; a row with `--lr_factor` (its command) trains the bit-pruned model at "
            "that multiple of the family's rates.\n\n"
            "| family | Keras | budget | starts from | activation range | weight clip | initial bits "
            "| steps (learn + fine-tune) "
            "| float % | float, as long again % | learning phase % | frozen % | deployed % | drop (points) | avg bits "
            f"| same class as Keras % | within {within:g} points | seconds |\n"
            "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|\n")
    rows, errors = [], []
    for key in _ordered(results, families):
        r = results[key]
        if r.get("ours") != "yes":
            errors.append(f"- {key}: {r.get('ours_stage')}: {r.get('ours_error')}")
            continue
        rows.append(f"| {r['family']} | {r['keras']} | {r['target_bits']:g} | {_start(r)} | {r['activation_range']} "
                    f"| {r['weight_clip']} | {_init(r)} | {r['steps']} + {r['finetune_steps']} "
                    f"| {_pct(r, 'float_accuracy')} | {_pct(r, 'float_again_accuracy')} | {_pct(r, 'learning_accuracy')} | {_pct(r, 'frozen_accuracy')} "
                    f"| {_pct(r, 'tflite_accuracy')} | {r['drop']:.1f} | {r['avg_bits']} | {_pct(r, 'same_class')} "
                    f"| {'yes' if r['drop'] <= within else 'no'} | {r.get('seconds', '–')} |")
    ran = {r["family"] for r in results.values()}
    missing = [name for name in families if name not in ran]
    tail = ("\n\nCommands (one per row, in order):\n\n" + "\n".join(commands(results, families))
            + (f"\n\nNo row at {target_bits:g} bits yet (not run: each family trains its network twice, "
               f"one family at a time, and the machine time ran out): {', '.join(missing)}." if missing else ""))
    return (head + "\n".join(rows) + ("\n\nErrors:\n\n" + "\n".join(errors) if errors else "")
            + tail + "\n")


def commands(results: dict, families: Sequence[str]) -> list:
    """Per row, the command that reruns it (its options as recorded in the json)."""
    out = []
    for key in _ordered(results, families):
        r = results[key]
        if r.get("ours") != "yes":
            continue
        init = "" if r.get("init_bits") is None else f" --init_bits={r['init_bits']:g}"
        init += (" --start=float" if r.get("start") == "float" else "") + (" --allocate" if r.get("allocate") else "")
        init += "" if r.get("lr_factor", 1.0) == 1.0 else f" --lr_factor={r['lr_factor']:g}"
        out.append(f"- {r['family']}: `python benchmarks/low_bits.py --families={r['family']} "
                   f"--target_bits={r['target_bits']:g} --activation_range={r['activation_range']} "
                   f"--weight_clip={r['weight_clip']} --steps={r['steps']} --finetune_steps={r['finetune_steps']}{init}`")
    return out


def _ordered(results: dict, families: Sequence[str]) -> list:
    order = list(families)
    return sorted(results, key=lambda k: order.index(results[k]["family"]) if results[k]["family"] in order else 99)
