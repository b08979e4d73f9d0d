"""ttbench.predict_job: a user's own model, DataLoader and torch.optim.SGD in one call. The
strongest check is exactness: a network trained only in its last layer is linear in the
trained weights, so the predicted curve must equal real training by that very optimiser."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

import ttbench
from ttbench.errors import ConfigError


def _problem(n: int = 40, seed: int = 0):
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Linear(6, 16), nn.Tanh(), nn.Linear(16, 3)).double()
    x, y = torch.randn(n, 6, dtype=torch.float64), torch.arange(n) % 3
    return model, x, y


def _real_losses(model, x, y, optimizer, steps: int) -> np.ndarray:
    out = []
    for _ in range(steps + 1):
        loss = nn.functional.cross_entropy(model(x), y)
        out.append(loss.item())
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    return np.array(out)


@pytest.mark.parametrize("momentum", [0.0, 0.5])
def test_a_last_layer_job_is_predicted_exactly_by_its_own_optimizer(momentum):
    model, x, y = _problem()
    optimizer = torch.optim.SGD(model[2].parameters(), lr=0.5, momentum=momentum)
    loader = DataLoader(TensorDataset(x, y), batch_size=len(y))
    pred = ttbench.predict_job(model, loader, optimizer, steps=30, predictors=["discrete"])
    assert pred.optimizer == "gd" and (pred.n_samples, pred.n_outputs) == (40, 3)
    assert all(p.requires_grad for p in model.parameters()) and model.training  # restored
    real = _real_losses(model, x, y, optimizer, 30)
    np.testing.assert_allclose(pred.curves["discrete"].loss, real, rtol=1e-9)


def test_a_loader_a_dataset_and_tensors_give_one_prediction():
    model, x, y = _problem()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    by = [
        ttbench.predict_job(model, data, optimizer, steps=40)
        for data in (DataLoader(TensorDataset(x, y), batch_size=64), TensorDataset(x, y), (x, y))
    ]
    for other in by[1:]:
        assert other.predictions["discrete"].t_eps == by[0].predictions["discrete"].t_eps
    assert isinstance(by[0].t_eps(0.05), int) and by[0].t_eps(0.05) <= 40


def test_a_mini_batch_loader_is_predicted_as_sgd_with_bands():
    model, x, y = _problem(n=60)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.5)
    loader = DataLoader(TensorDataset(x, y), batch_size=10, shuffle=True)
    pred = ttbench.predict_job(model, loader, optimizer, steps=50)
    assert pred.optimizer == "sgd" and set(pred.predictions) == {"exact_sgd", "sde"}
    assert pred.spec.train.batch_size == 10 and pred.spec.train.sampling == "epoch"
    assert set(pred.bands) == {"exact_sgd", "sde"}  # the paths' 5-95% per step
    lo, hi = pred.band(0.1, "exact_sgd")
    assert lo <= pred.t_eps(0.1, "exact_sgd") <= hi
    assert "SGD: N=60 C=3 T=50" in str(pred)
    table = pred.table()
    assert len(table) == 2 * len(pred.eps) and table["t_eps"].notna().all()
    fig = pred.plot()
    assert len(fig.axes) == 2 and len(fig.axes[0].lines) == 2


@pytest.mark.parametrize(
    ("make", "says"),
    [
        (lambda p: torch.optim.Adam(p), "SGD with heavy-ball momentum"),
        (lambda p: torch.optim.SGD(p, lr=0.1, momentum=0.9, nesterov=True), "nesterov"),
        (lambda p: torch.optim.SGD(p, lr=0.1, weight_decay=1e-4), "weight_decay"),
        (lambda p: torch.optim.SGD(p, lr=0.1, momentum=0.99, dampening=0.1), "dampening"),
    ],
)
def test_what_is_not_modelled_is_refused_in_one_line(make, says):
    model, x, y = _problem()
    with pytest.raises(ConfigError, match=says):
        ttbench.predict_job(model, (x, y), make(model.parameters()), steps=10)


def test_bad_data_loss_and_refined_predictors_are_refused():
    model, x, y = _problem()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    with pytest.raises(ConfigError, match="labels must be N integers"):
        ttbench.predict_job(model, (x, y.double()), optimizer, steps=10)
    with pytest.raises(ConfigError, match="cross-entropy"):
        ttbench.predict_job(
            model, (x, y), optimizer, steps=10, loss=nn.CrossEntropyLoss(label_smoothing=0.1)
        )
    with pytest.raises(ConfigError, match=r"ttbench\.Tracker"):
        ttbench.predict_job(model, (x, y), optimizer, steps=10, predictors=["relin"])
