"""The fused CPU kernels compute the same functions, and the same gradients, as their pure-PyTorch definitions."""
from __future__ import annotations

import pytest
import torch

from schnet_model import SchNet
from schnetqm9.model import kernels as cpu_kernels

pytestmark = pytest.mark.skipif(cpu_kernels.load() is None, reason="the C++ kernels did not build on this machine")


def random_pairs(num_atoms: int, num_pairs: int, g: torch.Generator) -> torch.Tensor:
    """[2, P] unordered pairs (j < i), sorted like the interaction graph, with repeated atoms on both sides."""
    i = torch.randint(1, num_atoms, (num_pairs,), generator=g)
    j = (torch.rand(num_pairs, generator=g) * i).long()
    order = torch.argsort(i * num_atoms + j)
    return torch.stack([j[order], i[order]])


@pytest.mark.parametrize("dtype,tol", [(torch.float32, 1e-5), (torch.float64, 1e-12)])
@pytest.mark.parametrize("channels", [1, 13, 64, 128])
def test_aggregate_values_and_gradients(dtype: torch.dtype, tol: float, channels: int) -> None:
    g = torch.Generator().manual_seed(channels)
    n, p = 40, 300
    pairs = random_pairs(n, p, g)
    inputs = [torch.randn(n, channels, generator=g, dtype=dtype), torch.randn(p, channels, generator=g, dtype=dtype),
              torch.rand(p, generator=g, dtype=dtype)]
    grad_out = torch.randn(n, channels, generator=g, dtype=dtype)
    results = []
    for fn in (cpu_kernels.aggregate, cpu_kernels.aggregate_reference):
        x, w, c = (t.clone().requires_grad_() for t in inputs)
        out = fn(x, w, c, pairs)
        out.backward(grad_out)
        results.append([out.detach(), x.grad, w.grad, c.grad])
    for fused, reference in zip(*results):
        scale = reference.abs().max().clamp(min=1)
        assert float((fused - reference).abs().max() / scale) < tol


def test_aggregate_gradcheck() -> None:
    g = torch.Generator().manual_seed(0)
    pairs = random_pairs(7, 15, g)
    x = torch.randn(7, 5, dtype=torch.float64, requires_grad=True, generator=g)
    w = torch.randn(15, 5, dtype=torch.float64, requires_grad=True, generator=g)
    c = torch.rand(15, dtype=torch.float64, requires_grad=True, generator=g)
    assert torch.autograd.gradcheck(lambda x, w, c: cpu_kernels.aggregate(x, w, c, pairs), (x, w, c))


def test_aggregate_without_envelope_gradient() -> None:
    """Training never differentiates the envelope (positions need no gradient): that gradient is skipped, and the
    others are unchanged."""
    g = torch.Generator().manual_seed(1)
    pairs = random_pairs(10, 30, g)
    x0, w0, c = torch.randn(10, 8, generator=g), torch.randn(30, 8, generator=g), torch.rand(30, generator=g)
    grads = []
    for fn in (cpu_kernels.aggregate, cpu_kernels.aggregate_reference):
        x, w = x0.clone().requires_grad_(), w0.clone().requires_grad_()
        fn(x, w, c, pairs).square().sum().backward()
        grads.append((x.grad, w.grad))
    assert torch.allclose(grads[0][0], grads[1][0], atol=1e-5) and torch.allclose(grads[0][1], grads[1][1], atol=1e-5)


@pytest.mark.parametrize("dtype,tol", [(torch.float32, 2e-7), (torch.float64, 1e-15)])
def test_shifted_softplus_values_and_gradients(dtype: torch.dtype, tol: float) -> None:
    """Absolute error within rounding of the result over the whole range, tails included, and ssp(0) = 0."""
    x = torch.cat([torch.linspace(-120, 120, 20001, dtype=dtype), torch.tensor([0.0, 1e-30, -1e-30], dtype=dtype)])
    x.requires_grad_()
    y = cpu_kernels.shifted_softplus(x)
    y.backward(torch.ones_like(y))
    exact = torch.nn.functional.softplus(x.detach().double(), threshold=1000.0) - cpu_kernels.LN2
    err = (y.detach().double() - exact).abs() / exact.abs().clamp(min=1.0)
    assert float(err.max()) < 4 * tol
    assert float((x.grad.double() - torch.sigmoid(x.detach().double())).abs().max()) < 4 * tol
    assert float(cpu_kernels.shifted_softplus(torch.zeros(1, dtype=dtype))) == pytest.approx(0.0, abs=tol)


def test_shifted_softplus_gradcheck() -> None:
    x = torch.randn(50, dtype=torch.float64, requires_grad=True) * 5
    assert torch.autograd.gradcheck(cpu_kernels.shifted_softplus, (x.detach().requires_grad_(),))


def test_second_derivatives_agree_with_the_definitions() -> None:
    """create_graph=True through the kernels (what a force loss needs): gradgradcheck, and the same second-order
    gradients as the pure-PyTorch definitions."""
    torch.manual_seed(0)
    x = torch.randn(10, 4, dtype=torch.float64, requires_grad=True)
    w = torch.randn(20, 4, dtype=torch.float64, requires_grad=True)
    c = torch.rand(20, dtype=torch.float64, requires_grad=True)
    j = torch.randint(0, 5, (20,))
    pairs = torch.stack([j, j + torch.randint(1, 5, (20,))])
    assert torch.autograd.gradgradcheck(lambda x, w, c: cpu_kernels.aggregate(x, w, c, pairs), (x, w, c))
    assert torch.autograd.gradgradcheck(cpu_kernels.shifted_softplus, (x,))

    def second_order(fn) -> tuple[torch.Tensor, ...]:
        grads = torch.autograd.grad(fn(x, w, c).square().sum(), (x, w, c), create_graph=True)
        return torch.autograd.grad(sum(g.square().sum() for g in grads), (x, w, c))

    fused = second_order(lambda x, w, c: cpu_kernels.shifted_softplus(cpu_kernels.aggregate(x, w, c, pairs)))
    reference = second_order(lambda x, w, c: cpu_kernels.shifted_softplus_reference(
        cpu_kernels.aggregate_reference(x, w, c, pairs)))
    for a, b in zip(fused, reference):
        torch.testing.assert_close(a, b)


def test_model_is_the_same_function_with_and_without_kernels(monkeypatch) -> None:
    """Whole model, float64: predictions and every parameter gradient agree between the two paths."""
    torch.manual_seed(0)
    model = SchNet(hidden_channels=32, num_filters=24, num_interactions=2, num_gaussians=10, cutoff=4.0).double()
    z = torch.randint(1, 10, (30,))
    pos = torch.randn(30, 3, dtype=torch.float64) * 1.5
    batch = torch.repeat_interleave(torch.arange(3), torch.tensor([8, 12, 10]))
    grads = []
    for kernels in (True, False):
        if not kernels:
            monkeypatch.setattr(cpu_kernels, "_module", None)
        model.zero_grad()
        out = model(z, pos, batch)
        out.sum().backward()
        grads.append((out.detach(), [p.grad.clone() for p in model.parameters()]))
    (out_k, g_k), (out_r, g_r) = grads
    assert torch.allclose(out_k, out_r, rtol=0, atol=1e-10)
    for a, b in zip(g_k, g_r):
        assert torch.allclose(a, b, rtol=1e-9, atol=1e-10)


def test_force_loss_gradients_are_the_same_with_and_without_kernels(monkeypatch) -> None:
    """A loss on the forces F = -dE/dr (second derivatives through the whole model, float64): every parameter
    gets the same gradient from the fused path as from the pure-PyTorch one."""
    torch.manual_seed(1)
    model = SchNet(hidden_channels=16, num_filters=12, num_interactions=2, num_gaussians=8, cutoff=4.0).double()
    z = torch.randint(1, 10, (14,))
    pos = torch.randn(14, 3, dtype=torch.float64) * 1.5
    batch = torch.repeat_interleave(torch.arange(2), torch.tensor([6, 8]))
    grads = []
    for kernels in (True, False):
        if not kernels:
            monkeypatch.setattr(cpu_kernels, "_module", None)
        model.zero_grad()
        r = pos.clone().requires_grad_(True)
        forces = -torch.autograd.grad(model(z, r, batch).sum(), r, create_graph=True)[0]  # [N, 3]
        forces.square().sum().backward()  # (biases that only shift the energy get no gradient)
        grads.append([torch.zeros_like(p) if p.grad is None else p.grad.clone() for p in model.parameters()])
    assert any(float(g.abs().max()) > 0 for g in grads[0])
    for a, b in zip(*grads):
        torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize("dtype,tol", [(torch.float32, 1e-6), (torch.float64, 1e-14)])
@pytest.mark.parametrize("num_gaussians", [1, 25, 50, 51])
def test_gaussians_equal_the_reference(dtype: torch.dtype, tol: float, num_gaussians: int) -> None:
    d = torch.rand(1000, dtype=dtype) * 12
    mu = torch.linspace(0, 10, num_gaussians, dtype=dtype)
    coeff = -0.5 / (10 / max(1, num_gaussians - 1)) ** 2
    fused = cpu_kernels.gaussians(d, mu, coeff)
    assert fused.shape == (1000, num_gaussians)
    assert float((fused - cpu_kernels.gaussians_reference(d, mu, coeff)).abs().max()) < tol
    d.requires_grad_()  # a gradient through the distances takes the differentiable reference path
    assert cpu_kernels.gaussians(d, mu, coeff).requires_grad
