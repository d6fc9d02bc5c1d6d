"""Budget-exact freezing: ``freeze_bitlengths(target_bits=...)`` lands at or under
the target, as close under it as one integer step allows, lowering the cheapest
tensors first. No training: learned bitlengths are set directly."""

import numpy as np
import pytest

import tf_bitpruning as tfbp
from tf_bitpruning import costs, rounding
from tests.support.models import bn_add_cnn, small_cnn

MODELS = {"sequential": small_cnn, "functional": bn_add_cnn}


@pytest.fixture(scope="module")
def learned():
    """One bit-pruned model per architecture (built once: this module is fast-tier)."""
    return {name: _learned(build) for name, build in MODELS.items()}


def _learned(build, seed=0):
    """A bit-pruned model with random real-valued bitlengths in [2.2, 6.8] and
    calibrated activation ranges (one training-mode call on random inputs)."""
    bp = tfbp.bitprune_model(build())
    rng = np.random.default_rng(seed)
    for t in costs.quantized_tensors(bp):
        n = rng.uniform(2.2, 6.8, size=t.bits_variable.shape).astype(np.float32)
        t.bits_variable.assign(n / t.quantizer.bits_lr_multiplier)
    bp(rng.uniform(0, 1, (32, 8, 8, 1)).astype(np.float32), training=True)
    return bp


def _bits(model):
    return {t.name: float(t.bits()) for t in costs.quantized_tensors(model)}


@pytest.mark.parametrize("weighting", ["uniform", "memory"])
@pytest.mark.parametrize("name", sorted(MODELS))
def test_lands_at_or_under_the_target_and_as_close_as_a_step_allows(learned, name, weighting):
    bp = learned[name]
    learned = _bits(bp)
    ceil = tfbp.average_bits(tfbp.freeze_bitlengths(bp), weighting=weighting)
    for target in (ceil - 0.3, 3.0):
        frozen = tfbp.freeze_bitlengths(bp, target_bits=target, weighting=weighting)
        bits = _bits(frozen)
        assert all(b == round(b) for b in bits.values())
        avg = tfbp.average_bits(frozen, weighting=weighting)
        assert avg <= target + 1e-6
        # Maximal: no tensor below its rounded-up bitlength could go one bit up and
        # still fit (the greedy gives back every step that fits).
        tensors = costs.quantized_tensors(frozen)
        for t in tensors:
            if bits[t.name] < np.ceil(learned[t.name] - 1e-3):
                up = costs.average_bits_tensor(
                    tensors, weighting, bits=lambda u, t=t: bits[u.name] + (1.0 if u is t else 0.0))
                assert float(up) > target + 1e-6, (t.name, target)
        if weighting == "uniform":  # one step is 1 / (number of tensors) bit
            assert avg >= target - 1.0 / len(tensors) - 1e-6


def test_without_target_rounding_is_unchanged(learned):
    bp = learned["sequential"]
    assert _bits(tfbp.freeze_bitlengths(bp)) == {k: float(np.ceil(v - 1e-3)) for k, v in _bits(bp).items()}


def test_cheapest_tensor_is_lowered_first(learned):
    tensors = costs.quantized_tensors(learned["sequential"])
    start = {t: np.float32(6.0) for t in tensors}
    sensitive = tensors[0]
    cost = lambda t, b: (100.0 if t is sensitive else 1.0) * float(4.0 ** (6.0 - b) - 1)  # noqa: E731
    # Uniform: lowering any one tensor by one bit saves the same; costs are
    # convex, so every tensor but the sensitive one goes down one bit.
    target = 6.0 - (len(tensors) - 1) / len(tensors)
    bits = rounding.fit_budget(tensors, start, target, "uniform", None, cost)
    assert bits[sensitive] == 6.0
    assert all(bits[t] == 5.0 for t in tensors[1:])


def test_calibration_data_measures_the_output_change(learned, monkeypatch):
    """With calibration data, the cost of lowering a tensor is the mean squared change of
    the model's outputs on that data (per sample) against the learned model, measured
    here independently: a frozen copy with that one tensor lowered."""
    from tf_bitpruning import freeze

    bp = learned["functional"]
    x = np.random.default_rng(1).uniform(0, 1, (64, 8, 8, 1)).astype(np.float32)
    target = tfbp.average_bits(tfbp.freeze_bitlengths(bp)) - 0.5
    measured = {}
    real_fit_budget = freeze.fit_budget

    def spy(tensors, start, target_bits, weighting, kind, cost, *args, **kwargs):
        # The costs as fit_budget first sees them: every other tensor at its start.
        measured.update({t: (start[t] - 1.0, cost(t, start[t] - 1.0)) for t in tensors
                         if float(np.min(start[t])) > 2.0})
        return real_fit_budget(tensors, start, target_bits, weighting, kind, cost, *args, **kwargs)

    monkeypatch.setattr(freeze, "fit_budget", spy)
    frozen = tfbp.freeze_bitlengths(bp, target_bits=target, calibration_data=x)
    assert tfbp.average_bits(frozen) <= target + 1e-6
    reference = bp(x, training=False).numpy()
    plain = tfbp.freeze_bitlengths(bp)  # every tensor at its rounded-up integer: the start
    twins = {t.name: t for t in costs.quantized_tensors(plain)}
    proxy = rounding.distance_cost(rounding.learned_bits(list(measured)))
    checked = 0
    for t, (lower, cost) in measured.items():
        twin = twins[t.name]
        twin_bits = twin.bits_variable.numpy()
        twin.bits_variable.assign(np.reshape(lower, twin_bits.shape) / twin.quantizer.bits_lr_multiplier)
        change = float(np.sum(np.square(plain(x, training=False).numpy() - reference))) / len(x)
        twin.bits_variable.assign(twin_bits)
        assert cost == pytest.approx(change, rel=1e-4, abs=1e-9), t.name
        assert cost != pytest.approx(proxy(t, lower)), t.name  # not the label-free proxy
        checked += 1
    assert checked >= 3


def test_kind_and_weighting_default_to_the_bit_loss():
    bp = _learned(small_cnn)
    costs.get_bit_loss(bp).kind = "weights"
    target = tfbp.average_bits(tfbp.freeze_bitlengths(bp), kind="weights") - 0.5
    frozen = tfbp.freeze_bitlengths(bp, target_bits=target)
    assert tfbp.average_bits(frozen, kind="weights") <= target + 1e-6
    learned = _bits(bp)
    acts = {k: v for k, v in _bits(frozen).items() if k.endswith("/activations")}
    assert acts == {k: float(np.ceil(learned[k] - 1e-3)) for k in acts}  # not covered, not moved


def test_bad_targets(learned):
    bp = learned["sequential"]
    # Lowest reachable: 3 kernels at 2 bits, 4 activations at 1 bit: 10 / 7 = 1.43.
    for target, message in [(1.2, "cannot be met.*1.429"), (0.5, r"\[1, 16\]"), (float("nan"), r"\[1, 16\]"),
                            ("three", "a number")]:
        with pytest.raises(ValueError, match=message):
            tfbp.freeze_bitlengths(bp, target_bits=target)


def test_calibration_data_needs_a_target(learned):
    with pytest.raises(ValueError, match="give target_bits"):
        tfbp.freeze_bitlengths(learned["sequential"], calibration_data=np.zeros((4, 8, 8, 1), np.float32))


def test_allowed_bits_are_respected(learned):
    bp = learned["sequential"]
    frozen = tfbp.freeze_bitlengths(bp, allowed_bits=(2, 4, 8), target_bits=4.0)
    assert set(_bits(frozen).values()) <= {2.0, 4.0, 8.0}
    assert tfbp.average_bits(frozen) <= 4.0 + 1e-6


@pytest.mark.parametrize("target", [0.99, 16.5, float("inf"), float("nan")])
def test_bit_budget_rejects_targets_outside_1_16_when_constructed(target):
    with pytest.raises(ValueError, match=r"\[1, 16\]"):
        tfbp.BitBudget(target_bits=target)


@pytest.mark.parametrize("anneal", [-0.1, 1.0, 2])
def test_bit_budget_rejects_bad_anneal(anneal):
    with pytest.raises(ValueError, match="anneal"):
        tfbp.BitBudget(target_bits=3.0, anneal=anneal)


def test_bit_budget_accepts_the_ends_of_the_range():
    assert tfbp.BitBudget(target_bits=1).target_bits == 1.0
    assert tfbp.BitBudget(target_bits=16.0).target_bits == 16.0


@pytest.mark.parametrize("weighting", ["uniform", "memory"])
def test_per_channel_bitlengths_fill_the_budget_one_channel_at_a_time(weighting):
    """Per-channel bitlengths: after whole-tensor steps, single channels go back up
    into what is left, so the average ends within one channel's step of the target
    (a whole kernel is a far coarser step), each channel at or under its rounding."""
    bp = tfbp.bitprune_model(small_cnn(), per_channel_bits=True)
    rng = np.random.default_rng(3)
    for t in costs.quantized_tensors(bp):
        n = rng.uniform(2.2, 6.8, size=t.bits_variable.shape).astype(np.float32)
        t.bits_variable.assign(n / t.quantizer.bits_lr_multiplier)
    bp(rng.uniform(0, 1, (32, 8, 8, 1)).astype(np.float32), training=True)
    tensors = costs.quantized_tensors(bp)
    ceil = {t.name: np.ceil(t.quantizer.bitlength(t.variables).numpy() - 1e-3) for t in tensors}
    # The largest single-channel step of the average: one channel of a kernel, one bit.
    total = sum(t.elements for t in tensors) if weighting == "memory" else len(tensors)
    step = max((t.elements / t.bits_variable.shape[-1] if weighting == "memory" else 1.0 / t.bits_variable.shape[-1])
               for t in tensors if t.kind == "weights") / (total if weighting == "memory" else 1.0)
    step /= 1.0 if weighting == "memory" else len(tensors)
    top = tfbp.average_bits(tfbp.freeze_bitlengths(bp), weighting=weighting)
    for target in (top - 0.37, top - 1.13):
        frozen = tfbp.freeze_bitlengths(bp, target_bits=target, weighting=weighting)
        avg = tfbp.average_bits(frozen, weighting=weighting)
        assert target - step - 1e-6 <= avg <= target + 1e-6, (target, avg, step)
        for t in costs.quantized_tensors(frozen):
            bits = t.quantizer.bitlength(t.variables).numpy()
            assert np.all(bits == np.round(bits)) and np.all(bits <= ceil[t.name])
