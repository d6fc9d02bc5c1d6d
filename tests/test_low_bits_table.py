"""The 4-bit page (benchmarks/low_bits.py): the starting bitlength is a column and part of
a row's key (rows started at 8 bits stay next to those started near the budget), and the
"within 3 points" column says "no" where the deployed model is further under float."""

import pytest
from absl import flags
from absl.testing import flagsaver

from benchmarks import low_bits


@pytest.fixture(autouse=True)
def parsed_flags():
    if not flags.FLAGS.is_parsed():
        flags.FLAGS.mark_as_parsed()
    with flagsaver.flagsaver(target_bits=4.0, within=3.0, out=None):
        yield


def _row(drop, init_bits=None, **extra):
    row = {"family": "MobileNet", "keras": "tf_keras 2.21.0", "target_bits": 4.0, "activation_range": "learned",
           "weight_clip": "max", "steps": 267, "finetune_steps": 89, "float_accuracy": 0.95,
           "learning_accuracy": 0.9, "frozen_accuracy": 0.9, "tflite_accuracy": round(0.95 - drop / 100, 4),
           "drop": drop, "avg_bits": 4.0, "same_class": 1.0, "ours": "yes", "commit": "abc1234"}
    if init_bits is not None or extra.pop("record_init", True):
        row["init_bits"] = init_bits
    row.update(extra)
    return row


def test_initial_bits_column_and_the_claim_per_row():
    page = low_bits.table({"a": _row(2.8, init_bits=5.0), "b": _row(3.3), "c": _row(1.0, record_init=False)},
                          "Made by `x`.")
    rows = [line for line in page.splitlines() if line.startswith("| MobileNet")]
    within = [r.split("|")[-3].strip() for r in rows]  # the column before seconds
    assert sorted(within) == ["no", "yes", "yes"], rows
    assert "| initial bits |" in page
    # drop 2.8 at init 5: within; drop 3.3 from the top of the range: not within
    assert any("| 5 | 267 + 89 |" in r and r.split("|")[-3].strip() == "yes" for r in rows), rows
    assert any("| 8 (top) |" in r and "| 3.3 |" in r and r.split("|")[-3].strip() == "no" for r in rows), rows
    # a row written before the column existed started at the top too
    assert sum("| 8 (top) |" in r for r in rows) == 2, rows


def test_row_key_keeps_rows_of_another_initial_bitlength():
    row = _row(1.0)
    old = low_bits.row_key("MobileNet", row)
    with flagsaver.flagsaver(init_bits=5.0):
        new = low_bits.row_key("MobileNet", row)
    assert old != new and new.startswith(old) and new.endswith("init5")


def test_page_gives_each_rows_command_and_names_the_families_not_run():
    page = low_bits.table({"a": _row(2.8, init_bits=5.0, seconds=482), "b": _row(3.3, family="ResNet50")},
                          "Made by `x`.")
    assert ("`python benchmarks/low_bits.py --families=MobileNet --target_bits=4 --activation_range=learned "
            "--weight_clip=max --steps=267 --finetune_steps=89 --init_bits=5`") in page
    assert "--families=ResNet50 " in page and "--finetune_steps=89`" in page  # no --init_bits: from the top
    not_run = next(line for line in page.splitlines() if line.startswith("No row at 4 bits yet"))
    assert "MobileNetV2" in not_run and "NASNetMobile" in not_run
    assert "MobileNet," not in not_run and "ResNet50," not in not_run and not not_run.endswith("ResNet50.")
    assert "| yes | 482 |" in page
