"""summary() and precision_report(): per-layer costs whose totals add up, in the
learning phase and frozen, JSON-ready, with an hls4ml-shaped precision section."""

import json
import re

import pytest
import tf_keras as keras

import tf_bitpruning as tfbp
from tf_bitpruning import costs
from tests.support.models import small_cnn

ADDITIVE = ("parameters", "weight_memory_bits", "weight_memory_kb", "macs", "bops")
FIXED = re.compile(r"^ap_u?fixed<(\d+),-?\d+>$")


@pytest.fixture()
def learned(digits):  # its users are slow: two epochs of training
    xtr, ytr, _, _ = digits
    bp = tfbp.bitprune_model(small_cnn(), regularization=0.5, bits_lr_multiplier=20.0)
    bp.compile(keras.optimizers.Adam(1e-3), "sparse_categorical_crossentropy")
    bp.fit(xtr[:512], ytr[:512], epochs=2, batch_size=32, verbose=0)
    return bp


def _check_totals(report):
    rows, totals = report["rows"], report["totals"]
    for key in ADDITIVE:
        assert totals[key] == pytest.approx(sum(r[key] for r in rows), rel=1e-9), key
    assert totals["compression_vs_float32"] == pytest.approx(32 * totals["parameters"] / totals["weight_memory_bits"])
    assert totals["compression_vs_int8"] == pytest.approx(totals["compression_vs_float32"] / 4)


@pytest.mark.slow
def test_rows_and_totals_learning_phase(learned):
    report = tfbp.precision_report(learned)
    json.loads(json.dumps(report))  # JSON-serializable
    _check_totals(report)
    assert [r["layer"] for r in report["rows"]] == ["quantize_layer", "conv2d", "conv2d_1", "dense"]
    bits = tfbp.bitlengths(learned)
    tensors = {t.name: t for t in costs.quantized_tensors(learned)}
    for row in report["rows"]:
        name = row["layer"]
        assert row["activation_bits"] == pytest.approx(bits[f"{name}/activations"], abs=1e-6)
        if name == "quantize_layer":
            assert row["weight_bits"] is None and row["parameters"] == row["macs"] == 0
            continue
        t = tensors[f"{name}/weights"]
        assert row["weight_bits"] == pytest.approx(bits[f"{name}/weights"], abs=1e-6)
        assert row["parameters"] == t.elements and row["macs"] == t.macs
        assert row["weight_memory_bits"] == pytest.approx(t.elements * row["weight_bits"])
        assert row["input_bits"] == pytest.approx(bits[t.input.name], abs=1e-6)
        assert row["bops"] == pytest.approx(t.macs * row["weight_bits"] * row["input_bits"], rel=1e-6)
    assert report["rows"][1]["macs"] == 8 * 8 * 9 * 16  # conv2d: 8x8 positions, 3x3x1 kernel, 16 filters
    assert report["totals"]["avg_bits"] == pytest.approx(tfbp.average_bits(learned), abs=1e-5)
    assert report["totals"]["float_parameters"] == 16 + 32 + 10  # the biases
    assert not report["totals"]["frozen"]


@pytest.mark.slow
def test_frozen_report_and_hls4ml_section(learned):
    frozen = tfbp.freeze_bitlengths(learned)
    report = tfbp.precision_report(frozen)
    _check_totals(report)
    assert report["totals"]["frozen"]
    bits = tfbp.bitlengths(frozen)
    for row in report["rows"]:
        assert float(row["activation_bits"]).is_integer()
    hls = report["hls4ml"]["LayerName"]
    assert set(hls) == {"conv2d", "conv2d_1", "dense"} | {frozen.layers[0]._inbound_nodes[0].inbound_layers.name}
    for layer in ("conv2d", "conv2d_1", "dense"):
        precision = hls[layer]["Precision"]
        assert int(FIXED.match(precision["weight"]).group(1)) == bits[f"{layer}/weights"]
        assert int(FIXED.match(precision["result"]).group(1)) == bits[f"{layer}/activations"]
    assert hls["conv2d"]["Precision"]["result"].startswith("ap_ufixed")  # after ReLU
    # The learning-phase report gives the same hls4ml widths (learned bits rounded up).
    assert tfbp.precision_report(learned)["hls4ml"] == report["hls4ml"]


def _lines(model):
    lines = []
    tfbp.summary(model, print_fn=lines.append)
    return lines


@pytest.mark.slow
def test_summary_prints_every_layer_and_totals(learned):
    text = "\n".join(_lines(learned))
    for name in ("quantize_layer", "conv2d", "conv2d_1", "dense", "Total", "float32", "int8"):
        assert name in text
    row = next(line for line in text.splitlines() if line.startswith("dense "))
    assert re.search(r"\d\.\d\d", row)  # real-valued bits, 2 decimals
    frozen_text = _lines(tfbp.freeze_bitlengths(learned))
    row = next(line for line in frozen_text if line.startswith("dense "))
    bits = tfbp.bitlengths(tfbp.freeze_bitlengths(learned))
    assert row.split()[1] == str(int(bits["dense/weights"]))  # integer bits when frozen
    assert "frozen" in frozen_text[0]


def test_multi_kernel_and_batchnorm_layers():
    L = keras.layers
    model = keras.Sequential([keras.Input((8, 3)), L.SeparableConv1D(4, 3), L.BatchNormalization(), L.ReLU(),
                              L.GlobalAveragePooling1D(), L.Dense(10)])
    bp = tfbp.bitprune_model(model, init_bits=6.0)
    report = tfbp.precision_report(bp)
    _check_totals(report)
    sep = next(r for r in report["rows"] if r["layer"] == "separable_conv1d")
    assert sep["parameters"] == 3 * 3 + 3 * 4 and sep["weight_bits"] == pytest.approx(6.0)
    # BatchNormalization folds only into Conv/Depthwise/Dense kernels at export, so a
    # SeparableConv1D (not split, unlike a SeparableConv2D) quantizes its own output
    # before the BN (the ReLU after it too).
    assert sep["activation_bits"] == pytest.approx(6.0)
    precision = report["hls4ml"]["LayerName"]["separable_conv1d"]["Precision"]
    assert set(precision) == {"depthwise", "pointwise", "result"}
    # bias (4) + BN gamma, beta, mean, variance (4 x 4) + dense bias (10)
    assert report["totals"]["float_parameters"] == 4 + 16 + 10
    assert report["totals"]["compression_vs_float32"] == pytest.approx(32 / 6)


def test_separable_conv2d_reports_as_its_two_convs():
    """A SeparableConv2D is bit-pruned as <name>_depthwise -> <name>_pointwise: two rows,
    the inner tensor as the depthwise row's output (its grid is the pointwise conv's
    input), the BN folded into the pointwise conv (no output grid of its own)."""
    L = keras.layers
    model = keras.Sequential([keras.Input((8, 8, 3)), L.SeparableConv2D(4, 3, name="sep"), L.BatchNormalization(),
                              L.ReLU(), L.GlobalAveragePooling2D(), L.Dense(10)])
    report = tfbp.precision_report(tfbp.bitprune_model(model, init_bits=6.0))
    _check_totals(report)
    rows = {r["layer"]: r for r in report["rows"]}
    depthwise, pointwise = rows["sep_depthwise"], rows["sep_pointwise"]
    assert (depthwise["parameters"], pointwise["parameters"]) == (3 * 3 * 3, 3 * 4)
    assert depthwise["activation_bits"] == pytest.approx(6.0) and pointwise["activation_bits"] is None
    assert pointwise["input_bits"] == pytest.approx(6.0)
    assert (depthwise["macs"], pointwise["macs"]) == (6 * 6 * 3 * 3 * 3, 6 * 6 * 3 * 4)
    layers = report["hls4ml"]["LayerName"]
    assert set(layers["sep_depthwise"]["Precision"]) == {"weight", "result"}
    assert set(layers["sep_pointwise"]["Precision"]) == {"weight"}
    # The same float parameters as before the split: bias (4), BN (4 x 4), dense bias (10).
    assert report["totals"]["float_parameters"] == 4 + 16 + 10


def test_not_bitpruned_model():
    with pytest.raises(ValueError, match="bitprune_model"):
        tfbp.precision_report(small_cnn())
    with pytest.raises(ValueError, match="bitprune_model"):
        tfbp.summary(small_cnn())
