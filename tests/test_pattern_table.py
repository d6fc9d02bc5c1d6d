"""The patterns page (benchmarks/pattern_table.py): a row's seeds as mean ± std, and the
claim "deployed within 1 point of float" names every row that misses it."""

from benchmarks.pattern_table import claim, table

PATTERNS = {"a": "row A", "b": "row B"}


def _run(seed, float_acc, same, deployed, **extra):
    run = {"seed": seed, "float_accuracy": float_acc, "float_same_schedule_accuracy": same,
           "learning_accuracy": deployed - 0.1, "deployed_accuracy": deployed, "tflite_accuracy": deployed, "agreement": 1.0,
           "confident": 300 + seed, "avg_bits": 6.0, "ours": "yes", "commit": "abc1234", "int8": "yes"}
    run.update(extra)
    return run


def _results(b_runs):
    a = [_run(0, 0.80, 0.84, 0.82), _run(1, 0.82, 0.86, 0.84), _run(2, 0.84, 0.88, 0.86)]
    return {"a:tf_keras": {"pattern": "a", "keras": "tf_keras", "runs": a, "command": "python x.py"},
            "b:keras3": {"pattern": "b", "keras": "keras3", "runs": b_runs, "command": "python x.py"}}


def test_row_shows_mean_and_std_over_seeds():
    page = table(_results([_run(0, 0.9, 0.9, 0.9, lr=1e-4, bits_lr_multiplier=100.0)]), "Made by `x`.", "patterns", PATTERNS, ("tf_keras", "keras3"))
    row_a = next(line for line in page.splitlines() if line.startswith("| row A"))
    # seeds 3; float 82.0 ± 2.0; same schedule 86.0 ± 2.0; learning phase 74.0 ± 2.0; deployed 84.0 ± 2.0;
    # deployed − float +2 each seed
    assert "| 3 |" in row_a and "| 82.0 ± 2.0 | 86.0 ± 2.0 | 74.0 ± 2.0 | 84.0 ± 2.0 | 2.0 ± 0.0 |" in row_a, row_a
    assert "100.0 ± 0.0 (300)" in row_a  # the fewest decided inputs over the seeds
    assert "| 0.001 (×10) |" in row_a  # a run that does not record its rates ran at 1e-3, ×10
    row_b = next(line for line in page.splitlines() if line.startswith("| row B"))
    assert "| 0.0001 (×100) |" in row_b, row_b
    assert "| 1 |" in row_b and "| 90.0 | 90.0 | 80.0 | 90.0 | 0.0 |" in row_b, row_b  # one seed: no ±


def test_claim_names_the_rows_more_than_a_point_under_float():
    assert claim(_results([_run(0, 0.9, 0.9, 0.895)]), PATTERNS).startswith("Every row's deployed accuracy")
    missed = claim(_results([_run(0, 0.9, 0.9, 0.88), _run(1, 0.9, 0.9, 0.87)]), PATTERNS)
    assert "row B under keras3 (-2.5 points)" in missed and "row A" not in missed


def test_claim_counts_a_row_that_did_not_finish_and_the_table_says_where_it_stopped():
    crashed = {"seed": 0, "ours": "no", "ours_stage": "export_tflite", "ours_error": "ValueError: boom",
               "float_accuracy": 0.9}
    results = _results([crashed])
    assert "row B under keras3 (did not finish)" in claim(results, PATTERNS)
    page = table(results, "Made by `x`.", "patterns", PATTERNS, ("tf_keras", "keras3"))
    assert "no (export_tflite)" in page and "b (keras3, seed 0), ours: ValueError: boom" in page
