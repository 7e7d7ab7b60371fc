"""Attributions (explain.py, predict.py --explain) and the attention readout: the sanity checks an expert asks for
(completeness, invariance, dependence on the weights, contributions that add up) and the readout's definition."""
from __future__ import annotations

import csv
import math
from pathlib import Path

import ase
import ase.io
import numpy as np
import pytest
import torch

import checkpoint
import explain
import predict
from schnet_model import SchNet

REPO = Path(__file__).resolve().parents[1]


def shipped(name: str) -> SchNet:
    return checkpoint.build_model(checkpoint.load(predict.SHIPPED[name]))


def molecule(qm9, i: int) -> tuple[torch.Tensor, torch.Tensor]:
    d = qm9[i]
    return d.z, d.pos


def rotated(pos: torch.Tensor) -> torch.Tensor:
    angle = torch.tensor(1.1)
    c, s = torch.cos(angle), torch.sin(angle)
    rot = torch.tensor([[c, -s, 0.0], [s, c, 0.0], [0.0, 0.0, 1.0]]) @ torch.tensor(
        [[1.0, 0.0, 0.0], [0.0, c, -s], [0.0, s, c]])
    return pos @ rot.T + torch.tensor([4.0, -2.0, 7.5])


@pytest.mark.parametrize("name", ["gap", "U0"])
def test_integrated_gradients_are_complete_within_one_percent(name: str, qm9) -> None:
    model = shipped(name)
    z, pos = molecule(qm9, 1096)
    ig = explain.integrated_gradients(model, z, pos)
    with torch.no_grad():
        assert ig.prediction == pytest.approx(float(model(z, pos)[0, 0]), abs=1e-3)
    assert ig.completeness_error <= 0.01
    assert ig.values.sum() == pytest.approx(ig.prediction - ig.baseline_prediction, rel=0.01)
    assert ig.values.shape == (len(z),) and np.all(np.isfinite(ig.values))


def test_attributions_are_invariant_to_rotation_and_translation(qm9) -> None:
    model = shipped("gap")
    z, pos = molecule(qm9, 2500)
    a, b = explain.integrated_gradients(model, z, pos), explain.integrated_gradients(model, z, rotated(pos))
    np.testing.assert_allclose(a.values, b.values, atol=2e-4)
    np.testing.assert_allclose(explain.saliency(model, z, pos), explain.saliency(model, z, rotated(pos)), atol=2e-4)


def test_attributions_change_when_the_weights_are_randomised(qm9) -> None:
    """Adebayo et al. 2018: an attribution that survives randomising the model explains the input, not the model."""
    model = shipped("gap")
    z, pos = molecule(qm9, 1096)
    trained = explain.integrated_gradients(model, z, pos).values, explain.saliency(model, z, pos)
    torch.manual_seed(0)
    for module in (model.atom_embedding, *model.interactions, model.lin1, model.lin2):
        module.reset_parameters()
    random = explain.integrated_gradients(model, z, pos).values, explain.saliency(model, z, pos)
    for a, b in zip(trained, random):
        rank_a, rank_b = np.argsort(np.argsort(a)), np.argsort(np.argsort(b))
        assert abs(np.corrcoef(rank_a, rank_b)[0, 1]) < 0.9  # not the same ordering of the atoms
        assert np.abs(a - b).max() > 0.1 * np.abs(a).max()


def test_sum_readout_contributions_add_up_to_the_u0_prediction(qm9) -> None:
    model = shipped("U0")
    z, pos = molecule(qm9, 1096)
    with torch.no_grad():
        contributions = model.atom_contributions(z, pos)[:, 0].double()
        assert float(contributions.sum()) == pytest.approx(float(model(z, pos)[0, 0]), abs=1e-3)


def test_saliency_is_the_norm_of_the_position_gradient(qm9) -> None:
    model = shipped("gap").double()
    z, pos = molecule(qm9, 10)
    pos = pos.double()
    s = explain.saliency(model, z, pos)
    h = 1e-5
    for i in (0, len(z) - 1):
        grad = []
        for k in range(3):
            plus, minus = pos.clone(), pos.clone()
            plus[i, k] += h
            minus[i, k] -= h
            with torch.no_grad():
                grad.append(float(model(z, plus)[0, 0] - model(z, minus)[0, 0]) / (2 * h))
        assert s[i] == pytest.approx(math.hypot(*grad), rel=1e-5)
