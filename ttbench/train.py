"""Real fine-tuning: the only place in ttbench that trains a network.

Gradient descent with heavy-ball momentum (torch.optim.SGD): full-batch by default, or
mini-batch SGD along given batches (see ttbench.core.sgd.batch_indices). The training loss and
error on the whole task are recorded every `eval_every` steps t = 0..T, before that step's
update. A loss that explodes (non-finite, or above EXPLODE times its start) stops the run; a
spike it recovers from (a catapult) does not. The run is marked diverged when its curve
exploded by the rule every curve follows (ttbench.core.curves.blew_up), which also counts a
run that ends above its start.

With a `state_file`, the whole fine-tuning state (step, weights, optimiser buffers, curves so
far) is saved there atomically at most every `save_every_s` seconds, tagged with `meta`; a later
call given that state (`resume=load_state(state_file, meta)`) continues from it: the batches
are fixed in advance and nothing else is random, so a resumed run reproduces the uninterrupted
one exactly.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from ttbench.core import losses
from ttbench.core.curves import Curves, blew_up, exploding
from ttbench.core.sgd import batch_indices
from ttbench.files import atomic_save
from ttbench.spec import RunSpec, Training
from ttbench.stages import sync

log = logging.getLogger(__name__)
EVALUATE_S = "evaluate_s"  # kept: seconds spent on SGD's whole-task loss so far


def finetune(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    *,
    lr: float,
    momentum: float,
    steps: int,
    loss: str = "ce",
    weight_decay: float = 0.0,
    batches: torch.Tensor | None = None,
    eval_every: int = 1,
    on_step: Callable[[int, float], None] | None = None,
    state_file: Path | None = None,
    save_every_s: float = 60.0,
    meta: dict[str, Any] | None = None,
    resume: dict[str, Any] | None = None,
    keep: Callable[[int, np.ndarray], Iterable[str]] | None = None,
    kept: dict[str, Any] | None = None,
    watch: Callable[[int, nn.Module], object] | None = None,
) -> Curves:
    """Fine-tune `model` in place for `steps` steps; `batches` (steps, B) selects SGD.
    Returns curves with steps // eval_every + 1 points. At every recorded step t, `keep(t,
    loss)` (the loss curve up to t) names the states to keep there, before t's update:
    kept["states"][name] receives "step", "model" (a state dict), "velocity" (the momentum
    buffer by parameter name, absent without momentum) and "seconds" (wall-clock since step 0);
    `kept` travels in the saved state, so a resumed run still has it. Under SGD the whole-task
    loss is an evaluation, not a part of training: its wall-clock so far is kept in
    kept[EVALUATE_S], so the cost a user pays can be told apart.
    `watch(t, model)` is called at every step before its update and must leave the model as
    it found it (the stability watch, ttbench.core.stability.Watch)."""
    if steps % eval_every:
        raise ValueError("steps must be a multiple of eval_every")
    opt = torch.optim.SGD(model.parameters(), lr=lr, momentum=momentum, weight_decay=weight_decay)
    points = steps // eval_every + 1
    loss_curve = np.full(points, np.nan)
    error_curve = np.full(points, np.nan)
    start, elapsed, segments = 0, 0.0, 1
    kept = {} if kept is None else kept
    if resume is not None:
        start, elapsed = resume["t"], resume.get("seconds", 0.0)
        segments = resume.get("segments", 1) + 1
        model.load_state_dict(resume["model"])
        opt.load_state_dict(resume["opt"])
        loss_curve[:], error_curve[:] = resume["loss"].numpy(), resume["error"].numpy()
        kept.update(resume.get("kept", {}))
        log.info("fine-tuning resumed at step %d", start)
    saved = began = time.monotonic()
    for t in range(start, steps + 1):
        if state_file is not None and t > start and time.monotonic() - saved >= save_every_s:
            state = {"t": t, "meta": meta, "model": model.state_dict(), "opt": opt.state_dict()}
            curves = {"loss": torch.from_numpy(loss_curve), "error": torch.from_numpy(error_curve)}
            seconds = elapsed + time.monotonic() - began
            try:
                more = {"kept": kept, "seconds": seconds, "segments": segments}
                atomic_save(state_file, state | curves | more)
            except OSError as e:  # a full disk costs the checkpoint, never the run
                log.warning(
                    "could not save the fine-tuning state to %s (%s): going on", state_file, e
                )
            saved = time.monotonic()
        if watch is not None:
            watch(t, model)
        opt.zero_grad(set_to_none=True)
        record = t % eval_every == 0
        if batches is None or record:
            if batches is not None:
                sync(x.device)
                evaluating = time.perf_counter()
            with torch.set_grad_enabled(batches is None and t < steps):
                f = model(x)
                value = losses.loss(f, y, loss)
            if record:
                loss_curve[t // eval_every] = value.item()
                error_curve[t // eval_every] = losses.error(f.detach(), y).item()
                if on_step is not None:
                    on_step(t, loss_curve[t // eval_every])
            if not torch.isfinite(value) or exploding(loss_curve[0], loss_curve[t // eval_every]):
                break
            if batches is not None:
                sync(x.device)
                kept[EVALUATE_S] = kept.get(EVALUATE_S, 0.0) + time.perf_counter() - evaluating
            states = kept.setdefault("states", {})
            for name in keep(t, loss_curve[: t // eval_every + 1]) if keep and record else ():
                if name not in states:
                    seconds = elapsed + time.monotonic() - began
                    states[name] = {"step": t, **_snapshot(model, opt, seconds)}
        if t == steps:
            break
        if batches is not None:
            idx = batches[t].to(x.device)
            value = losses.loss(model(x[idx]), y[idx], loss)
            if not torch.isfinite(value):
                break
        value.backward()
        opt.step()
    return Curves(loss_curve, error_curve, blew_up(loss_curve), interval=eval_every)


def _snapshot(model: nn.Module, opt: torch.optim.Optimizer, seconds: float) -> dict[str, Any]:
    names = {p: k for k, p in model.named_parameters()}
    velocity = {
        names[p]: s["momentum_buffer"].detach().clone()
        for p, s in opt.state.items()
        if s.get("momentum_buffer") is not None
    }
    weights = {k: v.detach().clone() for k, v in model.state_dict().items()}
    return {"model": weights, "velocity": velocity, "seconds": seconds}


def load_state(path: Path, meta: dict[str, Any] | None = None) -> dict[str, Any] | None:
    """The saved fine-tuning state, or None when there is none, it is unreadable, or it was
    saved under other settings (`meta`), with a warning in the last two cases."""
    if not Path(path).is_file():
        return None
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # writes are atomic, but a foreign or damaged file must not crash
        log.warning("ignoring unreadable fine-tuning state %s: %s", path, e)
        return None
    if state.get("meta") != meta:
        log.warning("ignoring fine-tuning state %s saved under other settings", path)
        return None
    return state


def sgd_batches(train: Training, n: int, seed: int) -> torch.Tensor | None:
    """A run's SGD batches (steps, B), drawn from its seed; None for full-batch GD. Shared by
    the run and the probes that fine-tune, so both see the same batches."""
    if train.optimizer != "sgd":
        return None
    gen = torch.Generator().manual_seed(seed)
    return batch_indices(n, train.batch_size, train.steps, train.sampling, gen)


def finetune_run(
    spec: RunSpec, model: nn.Module, x: torch.Tensor, y: torch.Tensor, **kw: Any
) -> Curves:
    """`finetune` with a run's optimiser, budget, loss and SGD batches (from its seed): the run
    and the probes that fine-tune train identically. `kw` adds the other options."""
    t = spec.train
    return finetune(
        model,
        x,
        y,
        lr=t.lr,
        momentum=t.momentum,
        steps=t.steps,
        loss=t.loss,
        weight_decay=t.weight_decay,
        batches=sgd_batches(t, len(y), spec.seed),
        eval_every=t.eval_every,
        **kw,
    )
