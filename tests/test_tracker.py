"""ttbench.Tracker, the convergence ETA inside a user's loop: exact on a job linear in its
trained weights (the re-linearised prediction, momentum buffer included, equals the real
curve), an ETA that counts down and follows the run, TensorBoard scalars read back."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

import ttbench
from tests.test_job import _problem


def _train(model, x, y, optimizer, tracker, steps: int) -> list[float]:
    real = []
    for _ in range(steps):
        loss = nn.functional.cross_entropy(model(x), y)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        real.append(loss.item())
        tracker.step(loss.item())
    real.append(nn.functional.cross_entropy(model(x), y).item())
    return real


def test_each_refinement_is_exact_on_a_job_linear_in_its_trained_weights():
    """Trained only in its last layer, the network is linear in what trains: re-linearised
    at 10%, 20% and 40% of the steps with the optimiser's momentum buffer, the prediction of
    the rest is the real curve, and so is the ETA's T_eps."""
    model, x, y = _problem()
    optimizer = torch.optim.SGD(model[2].parameters(), lr=0.5, momentum=0.5)
    tracker = ttbench.Tracker(model, (x, y), optimizer, steps=60, eps=0.05)
    assert tracker.eta.source == "discrete at w0" and tracker.eta.step == 0
    real = _train(model, x, y, optimizer, tracker, 60)
    assert sorted(tracker.refined) == [6, 12, 24]
    for k, refined in tracker.refined.items():
        np.testing.assert_allclose(refined.curves["relin"].loss, real, rtol=1e-9, err_msg=k)
    assert tracker.eta.source == "relin at step 24"
    assert tracker.eta.t_eps == ttbench.t_eps(np.array(real), 0.05)
    assert tracker.eta.steps_left == max(0, tracker.eta.t_eps - 60)


def test_the_eta_counts_down_between_refinements_and_says_itself():
    model, x, y = _problem(n=30)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.2)
    tracker = ttbench.Tracker(model, (x, y), optimizer, steps=50, eps=0.1, refine_at=(0.2,))
    first = tracker.eta
    etas = []
    for _ in range(9):
        loss = nn.functional.cross_entropy(model(x), y)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        etas.append(tracker.step(loss.item()))
    assert [e.steps_left for e in etas] == [first.t_eps - s for s in range(1, 10)]
    assert etas[-1].seconds_per_step > 0 and etas[-1].seconds_left > 0
    assert "in about" in str(etas[-1]) and "[discrete at w0" in str(etas[-1])
    assert tracker.postfix() == {"eta": f"{etas[-1].steps_left} steps"}


def test_a_mini_batch_loop_is_tracked_as_sgd_and_written_to_tensorboard(tmp_path):
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    from torch.utils.tensorboard import SummaryWriter

    model, x, y = _problem(n=60)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.5)
    loader = DataLoader(TensorDataset(x, y), batch_size=10, shuffle=True)
    writer = SummaryWriter(tmp_path)
    tracker = ttbench.Tracker(model, loader, optimizer, steps=40, eps=0.1, writer=writer)
    assert tracker.job.optimizer == "sgd"
    torch.manual_seed(1)
    for step in range(40):
        xb, yb = next(iter(loader))
        loss = nn.functional.cross_entropy(model(xb), yb)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        tracker.step(loss.item())
        if step == 3:
            assert tracker.eta.source == "relin_sgd at step 4"
    writer.close()
    events = EventAccumulator(str(tmp_path))
    events.Reload()
    scalars = events.Tags()["scalars"]
    assert {"ttbench/loss", "ttbench/eta_steps", "ttbench/predicted_loss_from_0"} <= set(scalars)
    assert len(events.Scalars("ttbench/loss")) == 40
    assert {"ttbench/predicted_loss_from_4", "ttbench/predicted_loss_from_16"} <= set(scalars)
    first = events.Scalars("ttbench/predicted_loss_from_0")
    predicted = tracker.job.curves["exact_sgd"].loss
    assert first[0].value == pytest.approx(predicted[0]) and len(first) == len(predicted)


@pytest.mark.slow  # importing lightning alone takes ~7 s
def test_the_lightning_callback_logs_the_eta_of_a_tiny_module():
    lightning = pytest.importorskip("lightning")
    from ttbench.lightning import ConvergenceETA

    model, x, y = _problem()

    class Tiny(lightning.LightningModule):
        def __init__(self):
            super().__init__()
            self.net = model

        def forward(self, inputs):
            return self.net(inputs)

        def training_step(self, batch, batch_idx):
            return nn.functional.cross_entropy(self(batch[0]), batch[1])

        def configure_optimizers(self):
            return torch.optim.SGD(self.net[2].parameters(), lr=0.5, momentum=0.5)

    eta = ConvergenceETA(eps=0.05)
    trainer = lightning.Trainer(
        max_steps=30, callbacks=[eta], accelerator="cpu", logger=False,
        enable_checkpointing=False, enable_model_summary=False, enable_progress_bar=False,
    )  # fmt: skip
    loader = DataLoader(TensorDataset(x, y), batch_size=len(y))
    trainer.fit(Tiny().double(), loader)
    assert eta.tracker.steps_done == 30 and sorted(eta.tracker.refined) == [3, 6, 12]
    assert eta.tracker.eta.source == "relin at step 12"
    assert trainer.callback_metrics["eta_steps"] == max(0, eta.tracker.eta.t_eps - 30)
