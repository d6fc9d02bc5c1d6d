"""The export plan (tf_bitpruning.export.plan): built by build_plan, then frozen; the
passes after it get new values instead of editing it."""

import dataclasses
import types

import numpy as np
import pytest
import tf_keras as keras

import tf_bitpruning as tfbp
from tf_bitpruning.export import plan_build
from tf_bitpruning.export.plan import Plan, build_grids, build_plan

L = keras.layers


def _frozen_model():
    inputs = keras.Input((8, 8, 1))
    x = L.ReLU()(L.BatchNormalization()(L.Conv2D(8, 3, padding="same", use_bias=False)(inputs)))
    y = L.BatchNormalization()(L.Add()([x, L.Conv2D(8, 1)(x)]))
    model = keras.Model(inputs, L.Dense(10)(L.Flatten()(L.MaxPooling2D()(y))))
    bp = tfbp.bitprune_model(model, init_bits=4.0)
    bp.compile("adam", keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    rng = np.random.default_rng(0)
    bp.train_on_batch(rng.uniform(0, 1, (32, 8, 8, 1)).astype("float32"), rng.integers(0, 10, 32))
    return tfbp.freeze_bitlengths(bp)


@pytest.mark.slow
def test_plan_is_built_then_frozen():
    frozen = _frozen_model()
    plan = build_plan(frozen)
    assert isinstance(plan, Plan)
    for field in dataclasses.fields(plan):
        value = getattr(plan, field.name)
        assert isinstance(value, (types.MappingProxyType, tuple, frozenset, bool)), field.name
    with pytest.raises(dataclasses.FrozenInstanceError):
        plan.weights = {}
    with pytest.raises(TypeError):
        plan.fold_into["x"] = np.zeros(1)
    for table in (plan.fold_into, plan.bias):
        for array in table.values():
            with pytest.raises(ValueError):
                array[...] = 0.0
    spec = next(iter(plan.weights.values()))
    with pytest.raises(ValueError):
        spec.kernel[...] = 0.0
    with pytest.raises(dataclasses.FrozenInstanceError):
        spec.multiplier = spec.multiplier
    assert plan.fold_into and plan.unfolded_bn and plan.bias  # conv -> BN folded, Add -> BN alone
    # Building twice gives the same tables: nothing is left behind in the model or the specs.
    again = build_plan(frozen)
    assert list(again.weights) == list(plan.weights)
    for key, spec in plan.weights.items():
        np.testing.assert_array_equal(spec.multiplier, again.weights[key].multiplier)
        np.testing.assert_array_equal(spec.scale, again.weights[key].scale)


@pytest.mark.slow
def test_bias_fitting_returns_new_weight_exports():
    frozen = _frozen_model()
    folds, weights, grids = build_grids(frozen, (), True)
    fold_into = plan_build.fold_offsets(frozen, folds)
    input_grid, bias = plan_build.bias_tables(frozen, grids, weights, fold_into)
    before = {key: (spec, spec.multiplier.copy(), spec.scale.copy()) for key, spec in weights.items()}
    fitted = plan_build.fit_bias(weights, input_grid, bias, fine_bias=True)
    assert list(fitted) == list(weights)
    for key, (spec, multiplier, scale) in before.items():
        assert weights[key] is spec  # the input is not edited
        np.testing.assert_array_equal(spec.multiplier, multiplier)
        np.testing.assert_array_equal(spec.scale, scale)
    assert any(fitted[key] is not weights[key] for key in weights if key[0] in input_grid)
