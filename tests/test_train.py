import time

import numpy as np
import pytest
import torch
from torch import nn

from tests.conftest import TINY, run_in_process, spec_of
from ttbench import build
from ttbench.core import losses
from ttbench.core.curves import CATAPULT, EXPLODE, EXPLODED
from ttbench.core.dynamics import sharpness
from ttbench.core.linearize import linearize
from ttbench.run import STATE
from ttbench.train import finetune, finetune_run, load_state


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
    g = torch.Generator().manual_seed(0)
    x = torch.randn(10, 1, 4, 4, dtype=torch.float64, generator=g)
    y = torch.randint(0, 4, (10,), generator=g)
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


def _two_layers(d: int, width: int, c: int) -> nn.Module:
    torch.manual_seed(1)
    model = nn.Sequential(nn.Linear(d, width, bias=False), nn.Linear(width, c, bias=False))
    with torch.no_grad():
        model[0].weight.normal_(0, d**-0.5)
        model[1].weight.normal_(0, width**-0.5)
    return model.double()


def test_a_catapult_is_trained_through_and_an_explosion_stops():
    """The two-layer linear network of Lewkowycz et al. (2020), MSE: at 1.5x the stability
    edge of its linearisation the loss spikes far above 10x its start, then recovers (a
    catapult); at 5x it explodes and the run stops there."""
    torch.manual_seed(0)
    x, y = torch.randn(16, 8, dtype=torch.float64), torch.arange(16) % 2
    lin = linearize(_two_layers(8, 256, 2), x)
    edge = 2 / sharpness(lin.theta, lin.f0, "mse")
    run = finetune(_two_layers(8, 256, 2), x, y, lr=1.5 * edge, momentum=0, steps=100, loss="mse")
    assert run.outcome() == CATAPULT and not run.diverged
    assert np.nanmax(run.loss) > 10 * run.loss[0] and run.loss[-1] < 0.7 * run.loss[0]
    assert np.isfinite(run.loss).all() and run.spike_at() == 2
    assert None not in run.t_eps("loss", [0.1, 0.4]).values()
    run = finetune(_two_layers(8, 256, 2), x, y, lr=5 * edge, momentum=0, steps=100, loss="mse")
    assert run.outcome() == EXPLODED and run.diverged
    assert run.stopped_at < 100 and not run.loss[run.stopped_at] <= EXPLODE * run.loss[0]


def test_divergence_is_recorded_and_stops():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(8, 1, 4, 4, dtype=torch.float64, generator=g) * 100
    y = torch.randint(0, 4, (8,), generator=g)
    curves = finetune(_tiny(), x, y, lr=1e6, momentum=0.9, steps=50, loss="mse")
    assert curves.diverged
    assert np.isnan(curves.loss[-1]) or not np.isfinite(curves.loss).all()


class _Preempted(Exception):
    pass


@pytest.mark.parametrize("sgd", [False, True])
def test_resume_from_saved_state_reproduces_the_uninterrupted_run(tmp_path, sgd):
    """Interrupted at step 13 after saving state every step, then resumed: identical curves
    and weights (momentum buffers included), and the state file of other settings is ignored."""
    torch.manual_seed(0)
    x = torch.randn(16, 1, 4, 4, dtype=torch.float64)
    y = torch.arange(16) % 4
    batches = torch.randint(0, 16, (30, 4)) if sgd else None
    kw = dict(lr=0.1, momentum=0.9, steps=30, batches=batches, eval_every=2, meta={"lr": 0.1})
    ref_model = _tiny()
    ref = finetune(ref_model, x, y, **kw)

    def preempt(t: int, _value: float) -> None:
        if t == 14:
            raise _Preempted

    state = tmp_path / "finetune.state"
    with pytest.raises(_Preempted):
        finetune(_tiny(), x, y, **kw, on_step=preempt, state_file=state, save_every_s=0)
    saved = load_state(state, {"lr": 0.1})
    assert saved["t"] == 14
    assert load_state(state, {"lr": 0.2}) is None
    model = _tiny()  # a fresh process: weights back at w0
    resumed = finetune(model, x, y, **kw, state_file=state, save_every_s=0, resume=saved)
    np.testing.assert_array_equal(resumed.loss, ref.loss)
    np.testing.assert_array_equal(resumed.error, ref.error)
    for p, q in zip(model.parameters(), ref_model.parameters(), strict=True):
        torch.testing.assert_close(p, q, rtol=0, atol=0)


class _Killed(Exception):
    pass


def test_a_resumed_run_counts_every_segments_fine_tuning_time(tmp_path, cache_dir):
    """Killed at step 6 (its state saved every step, 0.5 s spent before), then run again: the
    record's fine-tuning time holds both segments, and says there were two."""
    args = [*TINY[:-1], "steps=12"]
    spec = spec_of([*args, f"cache_dir={cache_dir}"])
    s = build.setup(spec)

    def killed_at_6(t: int, model) -> None:
        if t == 5:
            time.sleep(0.5)
        if t == 6:
            raise _Killed

    with pytest.raises(_Killed):
        finetune_run(
            spec, s.model(), s.x, s.y, state_file=tmp_path / STATE, save_every_s=0,
            meta=spec.identity(), watch=killed_at_6,
        )  # fmt: skip
    rec = run_in_process(args, tmp_path, cache_dir)
    assert rec.real.resumed_at == 6 and not (tmp_path / STATE).exists()
    assert rec.stages["finetune"]["segments"] == 2 and rec.stages["finetune"]["wall_s"] > 0.5


class _Slow(nn.Module):
    """The tiny model, sleeping `seconds` in every forward pass over `n` samples."""

    def __init__(self, n: int, seconds: float) -> None:
        super().__init__()
        self.net, self.n, self.seconds = _tiny(), n, seconds

    def forward(self, x):
        if len(x) == self.n:
            time.sleep(self.seconds)
        return self.net(x)


@pytest.mark.parametrize("slow", ["whole task", "batch"])
def test_sgd_whole_task_losses_are_timed_apart_from_its_steps(slow):
    """Under SGD the whole-task loss recorded at each step is an evaluation: its time is kept
    apart (so a run's fine-tuning is the bare steps a user pays); GD has none to keep."""
    torch.manual_seed(0)
    x, y = torch.randn(16, 1, 4, 4, dtype=torch.float64), torch.arange(16) % 4
    batches, pause = torch.randint(0, 16, (30, 4)), 0.02
    model, kept = _Slow(16 if slow == "whole task" else 4, pause), {}
    start = time.perf_counter()
    finetune(model, x, y, lr=0.1, momentum=0.0, steps=30, batches=batches, kept=kept)
    wall = time.perf_counter() - start
    if slow == "whole task":  # 31 recorded losses, each pausing
        assert 31 * pause <= kept["evaluate_s"] <= wall
    else:  # 30 steps, each pausing: not an evaluation
        assert wall - kept["evaluate_s"] >= 30 * pause
    gd = {}
    finetune(_tiny(), x, y, lr=0.1, momentum=0.0, steps=3, kept=gd)
    assert "evaluate_s" not in gd
