"""benchmarks/hgq2_table.py reads the benchmark pages' JSON into one row per run and seed: a page
whose float trained otherwise (``compare.py --float_epochs=150 ...``) keeps its float apart."""

from benchmarks import hgq2_table

PAGES = {
    "ours": {"bitpruning_runs": {"t": [dict(method="BitPruning 3 bits (x)", float_top1=0.90, top1=0.80,
                                            uniform_avg_bits=3.0, bits_no_output=2.8)]}},
    "ours_long_float": {"bitpruning_runs": {"t": [dict(method="BitPruning 3 bits (x)", float_top1=0.95, top1=0.70,
                                                       uniform_avg_bits=3.0)]}},
    "hgq": [dict(seed=0, beta=1e-5, top1=0.85, avg_bits=3.1)],
}


def test_a_page_with_its_own_float_label_leaves_the_20_epoch_float_row_alone(monkeypatch):
    monkeypatch.setattr(hgq2_table, "_load", PAGES.__getitem__)
    monkeypatch.setitem(hgq2_table.SOURCES, "t", (["hgq"], [
        ("ours", 0, ""), ("ours_long_float", 0, ", long float", "float (150 epochs)")]))
    rows = hgq2_table._rows("t")
    assert rows["float (compare.py: 20 epochs)"] == {0: (0.90, 32.0, None)}
    assert rows["float (150 epochs)"] == {0: (0.95, 32.0, None)}
    assert rows["ours: 3 bits (x)"] == {0: (0.80, 3.0, 2.8)}
    assert rows["ours: 3 bits (x), long float"] == {0: (0.70, 3.0, None)}
    assert rows["HGQ2 β = 1e-05"] == {0: (0.85, 3.1, None)}
