"""The 4-bit page (benchmarks/low_bits.py, written by benchmarks/low_bits_page.py): the
starting bitlength is a column and part of a row's key (rows started at 8 bits stay next to
those started near the budget), the "within 3 points" column says "no" where the deployed
model is further under float, and the page gives each row's command and the families not run."""

from benchmarks.low_bits_page import row_key, table

FAMILIES = ["MobileNet", "MobileNetV2", "ResNet50", "NASNetMobile"]


def _page(results):
    return table(results, "Made by `x`.", FAMILIES, 3.0, "applications_4bit.json", 16, 4.0)


def _row(drop, init_bits=None, record_init=True, **extra):
    row = {"family": "MobileNet", "keras": "tf_keras 2.21.0", "target_bits": 4.0, "activation_range": "learned",
           "weight_clip": "max", "steps": 267, "finetune_steps": 89, "float_accuracy": 0.95,
           "learning_accuracy": 0.9, "frozen_accuracy": 0.9, "tflite_accuracy": round(0.95 - drop / 100, 4),
           "drop": drop, "avg_bits": 4.0, "same_class": 1.0, "ours": "yes", "commit": "abc1234"}
    if record_init:
        row["init_bits"] = init_bits
    row.update(extra)
    return row


def _within(line):
    return line.split("|")[-3].strip()  # the column before seconds


def test_initial_bits_column_and_the_claim_per_row():
    page = _page({"a": _row(2.8, init_bits=5.0), "b": _row(3.3), "c": _row(1.0, record_init=False)})
    rows = [line for line in page.splitlines() if line.startswith("| MobileNet")]
    assert "| initial bits |" in page
    assert sorted(_within(r) for r in rows) == ["no", "yes", "yes"], rows
    # drop 2.8 at init 5: within; drop 3.3 from the top of the range: not within
    assert any("| 5 | 267 + 89 |" in r and _within(r) == "yes" for r in rows), rows
    assert any("| 8 (top) |" in r and "| 3.3 |" in r and _within(r) == "no" for r in rows), rows
    # a row written before the column existed started at the top too
    assert sum("| 8 (top) |" in r for r in rows) == 2, rows


def test_row_key_keeps_rows_of_another_initial_bitlength():
    row = _row(1.0)
    old = row_key("MobileNet", row, "2", 4.0, "learned", "max", None)
    new = row_key("MobileNet", row, "2", 4.0, "learned", "max", 5.0)
    assert old == "MobileNet 2 4 learned max 267+89"  # the key of the rows written before the flag
    assert new == old + " init5"


def test_page_gives_each_rows_command_and_names_the_families_not_run():
    page = _page({"a": _row(2.8, init_bits=5.0, seconds=482), "b": _row(3.3, family="ResNet50")})
    assert ("`python benchmarks/low_bits.py --families=MobileNet --target_bits=4 --activation_range=learned "
            "--weight_clip=max --steps=267 --finetune_steps=89 --init_bits=5`") in page
    assert "--families=ResNet50 " in page and "--finetune_steps=89`" in page  # no --init_bits: from the top
    not_run = next(line for line in page.splitlines() if line.startswith("No row at 4 bits yet"))
    assert not_run.endswith(": MobileNetV2, NASNetMobile."), not_run
    assert "| yes | 482 |" in page


def test_rows_from_the_float_model_keep_their_own_key_column_and_command():
    scratch = _row(6.4)
    trained = _row(1.5, start="float", allocate=True, lr_factor=0.2, float_again_accuracy=0.971)
    key = row_key("MobileNet", scratch, "2", 4.0, "learned", "max", None)
    assert row_key("MobileNet", trained, "2", 4.0, "learned", "max", None, "float", True, 0.2) == \
        key + " from-float allocate lr×0.2"
    page = _page({"a": scratch, "b": trained})
    rows = [line for line in page.splitlines() if line.startswith("| MobileNet")]
    assert any("| float model |" in r and "| allocated |" in r and "| 95.0 | 97.1 |" in r and _within(r) == "yes"
               for r in rows), rows
    assert any("| initial weights |" in r and "| 8 (top) |" in r and "| 95.0 | – |" in r and _within(r) == "no"
               for r in rows), rows
    assert "--finetune_steps=89 --start=float --allocate --lr_factor=0.2`" in page
