import numpy as np
import pytest
import torch
from torch import nn

from ttbench.core import losses
from ttbench.train import finetune


def _tiny(seed=0):
    torch.manual_seed(seed)
    model = nn.Sequential(
        nn.Conv2d(1, 3, 3), nn.BatchNorm2d(3), nn.ReLU(), nn.Flatten(), nn.Linear(12, 4)
    )
    model[1].running_mean.normal_()
    model[1].running_var.uniform_(0.5, 2)
    return model.double().eval()


@pytest.mark.parametrize("kind", ["ce", "mse"])
def test_steps_equal_hand_written_gd_with_momentum(kind):
    x = torch.randn(10, 1, 4, 4, dtype=torch.float64)
    y = torch.randint(0, 4, (10,))
    lr, m, steps = 0.3, 0.8, 3
    model = _tiny()
    ref = _tiny()
    curves = finetune(model, x, y, lr=lr, momentum=m, steps=steps, loss=kind)

    # w_{t+1} = w_t - lr * v_{t+1},  v_{t+1} = m v_t + grad,  v_0 = 0 (PyTorch's convention)
    params = list(ref.parameters())
    velocity = [torch.zeros_like(p) for p in params]
    expected = []
    for t in range(steps + 1):
        out = ref(x)
        value = losses.loss(out, y, kind)
        expected.append(value.item())
        if t == steps:
            break
        grads = torch.autograd.grad(value, params)
        with torch.no_grad():
            for p, v, g in zip(params, velocity, grads, strict=True):
                v.mul_(m).add_(g)
                p.sub_(lr * v)
    np.testing.assert_allclose(curves.loss, expected, rtol=1e-12)
    for p, q in zip(model.parameters(), ref.parameters(), strict=True):
        torch.testing.assert_close(p, q, rtol=1e-12, atol=1e-14)
    # BatchNorm statistics are frozen
    torch.testing.assert_close(model[1].running_mean, ref[1].running_mean)


def test_losses_have_documented_normalisation():
    f = torch.tensor([[2.0, 0.0], [0.0, 1.0], [1.0, 3.0]], dtype=torch.float64)
    y = torch.tensor([0, 0, 1])
    ce = -(torch.log_softmax(f, 1)[torch.arange(3), y]).mean()
    assert losses.loss(f, y, "ce").item() == pytest.approx(ce.item())
    onehot = torch.tensor([[1.0, 0], [1, 0], [0, 1]], dtype=torch.float64)
    assert losses.loss(f, y, "mse").item() == pytest.approx(
        0.5 * ((f - onehot) ** 2).sum().item() / 3
    )
    assert losses.error(f, y).item() == pytest.approx(1 / 3)


def test_divergence_is_recorded_and_stops():
    x = torch.randn(8, 1, 4, 4, dtype=torch.float64) * 100
    y = torch.randint(0, 4, (8,))
    curves = finetune(_tiny(), x, y, lr=1e6, momentum=0.9, steps=50, loss="mse")
    assert curves.diverged
    assert np.isnan(curves.loss[-1]) or not np.isfinite(curves.loss).all()
