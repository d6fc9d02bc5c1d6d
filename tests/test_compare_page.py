"""The page of benchmarks/compare.py: every number on docs/comparison*.md passes through
these functions, so a mislabelled seed or a curve that mixes uniform and learned
bitlengths would misstate the results."""

import math

from benchmarks import compare_page as page


def _row(method, top1, step, **extra):
    return {"method": method, "top1": top1, "step_s": step, "latency_s": 1.0, **extra}


def test_aggregate_means_over_seeds_and_ratios_to_tfmot_8bit():
    seeds = [[_row("tfmot 8-bit QAT", 0.9, 2.0), _row("BitPruning 3 bits", 0.8, 3.0)],
             [_row("tfmot 8-bit QAT", 1.0, 2.0), _row("BitPruning 3 bits", 0.9, 5.0)]]
    qat, bp = page.aggregate(seeds)
    assert math.isclose(bp["top1"], 0.85) and math.isclose(bp["top1_std"], 0.05)
    assert math.isclose(bp["step_vs_qat8"], 2.0) and math.isclose(qat["step_vs_qat8"], 1.0)


def test_runs_are_numbered_by_seed_in_the_order_they_ran():
    run = dict(float_top1=0.9, learn_top1=0.8, learn_bits=3.0, frozen_top1=0.8, top1=0.85, deployed_bits=3.0,
               tflite_top1=0.85, bits_no_output=3.0)
    runs = {"digits": [dict(run, method=m) for m in ("Uniform 3 bits", "BitPruning 3 bits") * 2]}
    lines = [l for l in page.runs_markdown(runs, first_seed=3, per_seed=2).splitlines() if l.startswith("| digits")]
    assert [l.split("|")[2].strip() for l in lines] == ["3", "3", "4", "4"]
    assert lines[0].split("|")[3].strip() == "Uniform 3 bits" and lines[0].rstrip().endswith("| — |")


def test_uniform_and_learned_rows_are_separate_curves():
    assert page.family({"method": "tfmot 3-bit QAT"}) == "tfmot"
    assert page.family({"method": "Uniform 3 bits (fixed bits, learned range)"}) == "Uniform (fixed bits, learned range)"
    assert page.family({"method": "BitPruning 2.5 bits (learned range)"}) == "BitPruning (learned range)"
    assert page.family({"method": "BitPruning 3 bits (learned range)"}) == page.family(
        {"method": "BitPruning 2.5 bits (learned range)"})


def test_the_plot_draws_each_curve(tmp_path):
    rows = [dict(_row("float32", 0.95, 1.0), weight_bits=32.0, top1_std=0.0),
            dict(_row("tfmot 3-bit QAT", 0.8, 1.0), weight_bits=3.0, top1_std=0.01)]
    rows += [dict(_row(f"{kind} {b} bits (learned range)", 0.9, 1.0), weight_bits=float(b), top1_std=0.01,
                  deployed_bits=float(b)) for kind in ("Uniform", "BitPruning") for b in (2, 3)]
    page.plot({"digits": rows}, str(tmp_path / "p.png"), "uniform")
    assert (tmp_path / "p.png").stat().st_size > 1000


def test_the_allocate_lever_parses_and_gets_its_own_curve():
    import pytest
    from absl import app

    assert page.levers("range+clip+allocate") == ["range", "clip", "allocate"]
    with pytest.raises(app.UsageError, match="fixed.*allocate"):  # allocate sets bitlengths fixed keeps
        page.levers("fixed+allocate")
    labels = ", ".join(page.LEVERS[v] for v in page.levers("range+clip+allocate"))
    without = ", ".join(page.LEVERS[v] for v in page.levers("range+clip"))
    assert page.family({"method": f"BitPruning 2.5 bits ({labels})"}) != page.family(
        {"method": f"BitPruning 2.5 bits ({without})"})
