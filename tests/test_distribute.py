"""tf.distribute: MirroredStrategy over two devices, and MultiWorkerMirroredStrategy
over two worker processes on localhost, train like one device.

Two logical CPUs must be configured before TensorFlow initializes its devices,
which this pytest process has already done, so ``distribute_run.py`` runs in a
fresh interpreter and trains the same model with and without the strategy
(same seed, weights, data, global batch; op determinism on).

What makes this hold: each replica sees half the batch, and the activation
range variables (aggregation MEAN) used to average the two half-batch extremes,
which differ from the global batch's min/max (measured before the fix: ranges
off by 0.045, bitlengths by 2e-4, loss by 4e-3, predictions by 0.02 after six
Adam steps). ``ActivationBitQuantizer`` now takes the min/max over all replicas.

The multi-worker run starts ``multiworker_run.py`` twice with ``TF_CONFIG`` naming
two free localhost ports (TensorFlow's collective ops over gRPC, as on a real
cluster); each worker trains distribute_run.py's model on its half of every global
batch, and the single-device run of ``distribute_run.py`` is the reference.
"""

import numpy as np
import pytest

from tests.support.subprocesses import finish, free_ports, start

pytestmark = pytest.mark.slow  # subprocesses that train

STEPS, BATCH = 6, 32


@pytest.fixture(scope="module")
def all_runs():
    """The MirroredStrategy script and the two multi-worker processes, run at the same time."""
    procs = [start("distribute_run.py", STEPS, BATCH),
             start("distribute_run.py", STEPS, BATCH, env_extra={"TFBP_KERAS": "3"})]
    ports = free_ports(2)
    procs += [start("multiworker_run.py", index, *ports, "--steps", STEPS, "--batch", BATCH)
              for index in range(2)]
    return finish(procs)


@pytest.fixture(scope="module")
def runs(all_runs):
    returncode, result, err = all_runs[0]
    assert returncode == 0, err[-4000:]
    return result


@pytest.fixture(scope="module")
def workers(all_runs):
    for index, (returncode, _, err) in enumerate(all_runs[2:]):
        assert returncode == 0, f"worker {index} failed:\n{err[-4000:]}"
    return [result for _, result, _ in all_runs[2:]]


@pytest.fixture(scope="module")
def keras3_runs(all_runs):
    returncode, result, err = all_runs[1]
    assert returncode == 0, err[-4000:]
    return result



def _largest_difference(a, b):
    """The largest absolute difference over every variable (printed: docs/distributed.md)."""
    return max(float(np.max(np.abs(np.asarray(a[n]) - np.asarray(b[n])))) for n in b)

def test_two_replicas_really_ran(runs):
    assert runs["replicas"] == 2
    assert len(runs["devices"]) == 2
    # The bitlengths moved (8 -> about 6.8), so the comparison below is not vacuous.
    assert max(runs["mirrored"]["bits"].values()) < 7.5


def test_same_loss_and_bitlengths_as_one_device(runs):
    single, mirrored = runs["single"], runs["mirrored"]
    assert mirrored["loss"] == pytest.approx(single["loss"], rel=1e-5)
    assert sorted(mirrored["bits"]) == sorted(single["bits"])
    for name, n in single["bits"].items():
        assert mirrored["bits"][name] == pytest.approx(n, abs=1e-5), name


def test_bit_budget_callback_under_the_strategy(runs):
    single, mirrored = runs["single"], runs["mirrored"]
    assert mirrored["frozen_bits"] == single["frozen_bits"]
    assert mirrored["bit_lambda"] != 0.5  # the callback changed λ from its start
    assert mirrored["bit_lambda"] == pytest.approx(single["bit_lambda"], rel=1e-4)


def test_same_variables_and_predictions_as_one_device(runs):
    single, mirrored = runs["single"], runs["mirrored"]
    assert list(mirrored["variables"]) == list(single["variables"])
    ranges = [name for name in single["variables"] if name.endswith(("_min:0", "_max:0"))]
    assert len(ranges) == 6  # input, conv and dense activation ranges
    for name, value in single["variables"].items():
        np.testing.assert_allclose(mirrored["variables"][name], value, rtol=0, atol=1e-4, err_msg=name)
    np.testing.assert_allclose(mirrored["predictions"], single["predictions"], rtol=0, atol=1e-5)
    print(f"mirrored: largest variable difference {_largest_difference(mirrored['variables'], single['variables']):.1e}")


def test_two_workers_really_ran(workers):
    assert [w["worker"] for w in workers] == [0, 1]
    for w in workers:
        assert (w["workers"], w["replicas"]) == (2, 2)


def test_two_workers_train_like_one_device(runs, workers):
    """Same tolerances as MirroredStrategy, for the same reason: each worker sums the
    gradient over its 16 examples and the all-reduce adds the two partial sums, a
    different float32 summation order than one device's 32-example sum (~1e-7
    relative per step); six Adam steps keep that far below the bounds below."""
    single = runs["single"]
    for w in workers:
        assert w["loss"] == pytest.approx(single["loss"], rel=1e-5)
        assert w["bit_lambda"] != 0.5  # BitBudget moved λ, identically on both workers
        assert w["bit_lambda"] == pytest.approx(single["bit_lambda"], rel=1e-4)
        assert sorted(w["bits"]) == sorted(single["bits"])
        for name, n in single["bits"].items():
            assert w["bits"][name] == pytest.approx(n, abs=1e-5), name
        # Every variable, the raw bitlength parameters and activation ranges included.
        assert list(w["variables"]) == list(single["variables"])
        for name, value in single["variables"].items():
            np.testing.assert_allclose(w["variables"][name], value, rtol=0, atol=1e-4, err_msg=name)
        np.testing.assert_allclose(w["predictions"], single["predictions"], rtol=0, atol=1e-5)
        print(f"worker {w['worker']}: largest variable difference "
              f"{_largest_difference(w['variables'], single['variables']):.1e}")
    # Mirrored variables: both workers hold exactly the same values.
    assert workers[0]["variables"] == workers[1]["variables"]
    assert workers[0]["bit_lambda"] == workers[1]["bit_lambda"]


def test_keras3_mirrored_trains_like_one_device(keras3_runs):
    """The Keras 3 path (our wrapper, Keras 3's fit) under MirroredStrategy, as above."""
    single, mirrored = keras3_runs["single"], keras3_runs["mirrored"]
    assert keras3_runs["replicas"] == 2
    assert mirrored["loss"] == pytest.approx(single["loss"], rel=1e-5)
    assert mirrored["bit_lambda"] == pytest.approx(single["bit_lambda"], rel=1e-4)
    assert mirrored["bits"] == pytest.approx(single["bits"], abs=1e-5)
    assert mirrored["frozen_bits"] == single["frozen_bits"]  # freezing works on mirrored variables
    for name, value in single["variables"].items():
        np.testing.assert_allclose(mirrored["variables"][name], value, rtol=0, atol=1e-4, err_msg=name)
    np.testing.assert_allclose(mirrored["predictions"], single["predictions"], rtol=0, atol=1e-5)
    print(f"keras3 mirrored: largest variable difference "
          f"{_largest_difference(mirrored['variables'], single['variables']):.1e}")


def test_keras3_trains_like_tf_keras(runs, keras3_runs):
    """Same model, seed, data and callback: the Keras 3 path computes what tfmot's path does
    (same quantizer math and placement; the two Kerases' initializers agree at a seed),
    up to float summation order."""
    ours, theirs = keras3_runs["single"], runs["single"]
    assert ours["loss"] == pytest.approx(theirs["loss"], rel=1e-5)
    assert ours["bit_lambda"] == pytest.approx(theirs["bit_lambda"], rel=1e-4)
    assert ours["bits"] == pytest.approx(theirs["bits"], abs=1e-5)
    np.testing.assert_allclose(ours["predictions"], theirs["predictions"], rtol=0, atol=1e-5)
