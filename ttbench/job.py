"""Predict your own training job from Python, in one call: `predict_job(model, data,
optimizer, steps=...)` with a `torch.utils.data.DataLoader` (or a `Dataset`, or tensors) and
a `torch.optim.SGD`, and get what `python -m ttbench.run` reports of a prediction: curves,
T_eps per eps, the calibrated bands, the stability and validity signals and the warnings, and
what it cost.

What is modelled, and so accepted: SGD with heavy-ball momentum (no Nesterov, no dampening,
no weight decay), one learning rate for every parameter; the loader's batch size (full batch:
gradient descent); its sampling (a RandomSampler with replacement, else a fresh permutation
per epoch with the tail dropped); cross-entropy or ttbench's MSE (1/2 |f - onehot|^2 per
sample, averaged). The model is linearised in eval mode (BatchNorm statistics frozen), over
the parameters the optimiser trains. Anything else is refused with a line that says so.
"""

from __future__ import annotations

import math
import time
import warnings
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from pathlib import Path

import pandas as pd
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset, RandomSampler

from ttbench.bands import default_calibration
from ttbench.config import compose
from ttbench.core.curves import DEFAULT_EPS, Curves
from ttbench.core.stability import DIVERGES, SPIKE_AHEAD, forecast
from ttbench.errors import ConfigError
from ttbench.prediction import Evidence, at_w0, entry, path_bands, with_bands
from ttbench.predictors import PREDICTORS, Inputs
from ttbench.record import PredictorRecord
from ttbench.spec import ModelSpec, RunSpec
from ttbench.stages import Stages
from ttbench.validate import validate

GD_PREDICTORS, SGD_PREDICTORS = ("ode", "discrete"), ("exact_sgd", "sde")


@dataclass(frozen=True)
class Data:
    """A job's data as tensors, with how its optimiser draws batches (None: full batch)."""

    x: torch.Tensor
    y: torch.Tensor
    batch_size: int | None = None
    sampling: str | None = None  # with_replacement | epoch


def as_data(data, batch_size: int | None = None) -> Data:
    """A DataLoader (its batch size and sampler), a map-style Dataset, or (x, y) tensors; the
    first two items of each batch or sample are the inputs and the integer labels."""
    if isinstance(data, DataLoader):
        xs, ys = zip(*((b[0], b[1]) for b in data), strict=True)
        x, y = torch.cat(xs), torch.cat(ys)
        size = batch_size or data.batch_size or len(xs[0])
        sampler = data.sampler
        replacement = isinstance(sampler, RandomSampler) and sampler.replacement
        sampling = "with_replacement" if replacement else "epoch"
    elif isinstance(data, Dataset):
        items = [data[i] for i in range(len(data))]  # type: ignore[arg-type]
        x = torch.stack([torch.as_tensor(i[0]) for i in items])
        y = torch.as_tensor([int(i[1]) for i in items])
        size, sampling = batch_size, "epoch"
    elif isinstance(data, Sequence) and len(data) == 2:
        x, y = torch.as_tensor(data[0]), torch.as_tensor(data[1])
        size, sampling = batch_size, "epoch"
    else:
        raise ConfigError(
            "data", type(data).__name__, "must be a DataLoader, a Dataset or (inputs, labels)"
        )
    if y.dtype.is_floating_point or y.dim() != 1 or len(y) != len(x) or len(y) == 0:
        raise ConfigError("data", tuple(y.shape), "labels must be N integers, one per input")
    if size is None or size >= len(y):
        return Data(x, y.long())
    return Data(x, y.long(), int(size), sampling)


def sgd_settings(optimizer: torch.optim.Optimizer) -> tuple[float, float, list[nn.Parameter]]:
    """(lr, momentum, parameters) of a torch.optim.SGD that ttbench models; refused otherwise."""
    name = type(optimizer).__name__
    if not isinstance(optimizer, torch.optim.SGD):
        raise ConfigError(
            "optimizer", name, "ttbench models SGD with heavy-ball momentum (torch.optim.SGD) only"
        )
    groups = optimizer.param_groups
    lrs, moms = {float(g["lr"]) for g in groups}, {float(g["momentum"]) for g in groups}
    if len(lrs) > 1 or len(moms) > 1:
        raise ConfigError("optimizer", name, "one lr and one momentum for every parameter group")
    for key, allowed in (("nesterov", False), ("dampening", 0), ("weight_decay", 0)):
        value = groups[0].get(key, allowed)
        if any(g.get(key, allowed) != allowed for g in groups):
            raise ConfigError(f"optimizer.{key}", value, f"must be {allowed}: not modelled")
    params = [p for g in groups for p in g["params"]]
    return lrs.pop(), moms.pop(), params


def _loss_name(loss) -> str:
    if isinstance(loss, nn.CrossEntropyLoss):
        if loss.reduction != "mean" or loss.label_smoothing or loss.weight is not None:
            raise ConfigError("loss", loss, "plain mean cross-entropy only")
        return "ce"
    if loss in ("ce", "mse"):
        return loss
    raise ConfigError("loss", loss, "must be 'ce', 'mse' or a plain nn.CrossEntropyLoss()")


@dataclass
class JobPrediction:
    """What a prediction of a job says: per predictor its curves (per step), T_eps per eps
    with the calibrated band, validity and trust, the signals and warnings, and the cost."""

    eps: tuple[float, ...]
    steps: int
    optimizer: str  # gd | sgd
    predictions: dict[str, PredictorRecord]
    curves: dict[str, Curves]
    bands: dict[str, dict[float, Curves]]
    signals: dict[str, float]
    warnings: list[str]
    stages: dict[str, dict[str, float]]
    seconds: float
    n_samples: int = 0
    n_outputs: int = 0
    spec: RunSpec | None = field(default=None, repr=False)
    inputs: Inputs | None = field(default=None, repr=False)  # what a refinement reuses
    trained: frozenset[int] = field(default=frozenset(), repr=False)  # id() of trained weights

    @property
    def best(self) -> str:
        """The predictor read by default: the linearised dynamics of the job's optimiser."""
        if self.optimizer == "gd" and "discrete" in self.predictions:
            return "discrete"
        return next(iter(self.predictions))

    def t_eps(self, eps: float = 0.05, predictor: str | None = None, kind: str = "loss"):
        """Predicted steps until the loss (or error) stays within eps of its range."""
        return self.predictions[predictor or self.best].t_eps[kind][self._i(eps)]

    def band(self, eps: float = 0.05, predictor: str | None = None, kind: str = "loss"):
        """The (5%, 95%) band of the real T_eps, or None where the calibration has none."""
        q = self.predictions[predictor or self.best].band[kind][self._i(eps)]
        return None if q.q05 is None else (q.q05, q.q95)

    def _i(self, eps: float) -> int:
        if eps not in self.eps:
            raise ValueError(f"eps={eps} was not predicted: one of {list(self.eps)}")
        return self.eps.index(eps)

    def table(self, kind: str = "loss") -> pd.DataFrame:
        """One row per (predictor, eps): t_eps, the band, validity and trust."""
        rows = []
        for name, p in self.predictions.items():
            for i, e in enumerate(self.eps):
                q = p.band[kind][i] if p.band else None
                rows.append(
                    {
                        "predictor": name,
                        "eps": e,
                        "t_eps": p.t_eps[kind][i],
                        "q05": None if q is None else q.q05,
                        "q95": None if q is None else q.q95,
                        "validity": p.validity,
                        "trusted": p.trusted,
                    }
                )
        return pd.DataFrame(rows)

    def plot(self, path: str | Path | None = None, title: str = ""):
        """The predicted loss and error curves with the stochastic bands, as a matplotlib
        Figure; also written to `path` (.png, .pdf) when given."""
        from ttbench.plots import curves_figure

        fig = curves_figure(self.curves, self.bands, title)
        if path is not None:
            fig.savefig(path, dpi=150)
        return fig

    def __str__(self) -> str:
        t = self.table()
        t["band"] = [
            "" if q05 is None or pd.isna(q05) else f"{q05:g}-{q95:g}"
            for q05, q95 in zip(t["q05"], t["q95"], strict=True)
        ]
        wide = t.pivot(index="eps", columns="predictor", values=["t_eps", "band"])
        head = (
            f"{self.optimizer.upper()}: N={self.n_samples} C={self.n_outputs} T={self.steps}; "
            f"predicted in {self.seconds:.1f} s\nT_eps of the loss, in steps:"
        )
        return "\n".join([head, wide.to_string(), *self.warnings])


def predict_job(
    model: nn.Module,
    data,
    optimizer: torch.optim.Optimizer,
    steps: int,
    loss="ce",
    eps: Iterable[float] = DEFAULT_EPS,
    predictors: Iterable[str] | None = None,
    theta: str = "hybrid",
    batch_size: int | None = None,
    device: str | torch.device | None = None,
    seed: int = 0,
) -> JobPrediction:
    """Predict the training of `model` on `data` by `optimizer` for `steps` steps, without
    training: linearised at its current weights, Theta in mode `theta` (hybrid | exact | trace
    | projected), the default predictors of its optimiser (GD: ode, discrete; SGD: exact_sgd,
    sde) or those named. `batch_size` overrides the loader's (a Dataset or tensors: full batch
    unless given). Bad input raises ttbench.errors.ConfigError, with a one-line message."""
    start = time.perf_counter()
    lr, momentum, params = sgd_settings(optimizer)
    d = as_data(data, batch_size)
    sgd = d.batch_size is not None
    names = tuple(predictors or (SGD_PREDICTORS if sgd else GD_PREDICTORS))
    refined = [n for n in names if n in PREDICTORS and PREDICTORS[n].prefix]
    if refined:
        raise ConfigError(
            "predictors", refined[0], "observes real steps: use ttbench.Tracker in the loop"
        )
    overrides = [
        f"lr={lr}",
        f"momentum={momentum}",
        f"steps={steps}",
        f"loss={_loss_name(loss)}",
        f"eps=[{','.join(map(str, eps))}]",
        f"predictor.names=[{','.join(names)}]",
        f"theta.mode={theta}",
        f"seed={seed}",
        "refine.steps=0",
        "task.k=2",  # the task is the user's: only its size bounds the batch below
        f"task.n={len(d.y)}",
        *(["optim=sgd", f"optim.batch_size={d.batch_size}", f"optim.sampling={d.sampling}"]
          if sgd else []),
    ]  # fmt: skip
    spec = validate(compose(overrides))
    spec = replace(spec, model=ModelSpec("user", 0.0), classes=int(d.y.max()) + 1)
    dev = torch.device(device) if device is not None else next(model.parameters()).device
    stages = Stages(dev)
    trained = frozenset(id(p) for p in params)
    with linearising(model, trained), quiet_torch():
        inputs, predicted, signals = at_w0(spec, model, d.x.to(dev), d.y.to(dev), stages)
    entries = {n: entry(n, p, spec) for n, p in predicted.items()}
    records = with_bands(entries, spec, default_calibration(), Evidence(signals), True)
    return JobPrediction(
        eps=spec.eps,
        steps=steps,
        optimizer=spec.train.optimizer,
        predictions=records,
        curves={n: p.curves for n, p in predicted.items()},
        bands={n: path_bands(p.solved.paths) for n, p in predicted.items() if p.solved.paths},
        signals=signals,
        warnings=_warnings(records, signals, spec),
        stages=stages.stats,
        seconds=time.perf_counter() - start,
        n_samples=len(d.y),
        n_outputs=int(inputs.f0.shape[1]),
        spec=spec,
        inputs=inputs,
        trained=trained,
    )


@contextmanager
def quiet_torch() -> Iterator[None]:
    """torch's forward-mode AD compiles its decompositions by torch.jit.script on its first
    jvp and warns that jit is deprecated: nothing a user can act on."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", "`torch.jit.script` is deprecated", FutureWarning)
        yield


@contextmanager
def linearising(model: nn.Module, trained: frozenset[int]) -> Iterator[nn.Module]:
    """The model as ttbench linearises it: in eval mode (BatchNorm frozen), only the weights
    the optimiser trains requiring gradients; restored afterwards."""
    flags = {p: p.requires_grad for p in model.parameters()}
    was_training = model.training
    try:
        for p in model.parameters():
            p.requires_grad_(flags[p] and id(p) in trained)
        model.eval()
        yield model
    finally:
        for p, flag in flags.items():
            p.requires_grad_(flag)
        model.train(was_training)


def _warnings(records: dict[str, PredictorRecord], signals, spec: RunSpec) -> list[str]:
    out = []
    said = forecast({0: signals.get("stability", 0.0)}, spec.train.momentum, spec.watch.threshold)
    if said.verdict == DIVERGES:
        out.append("stability: GD is strongly unstable from the start: likely to explode")
    elif said.verdict == SPIKE_AHEAD:
        out.append(
            "stability: past the edge of stability at w0: a loss spike is ahead, which the "
            "predictions do not model"
        )
    for name, r in records.items():
        if r.trusted is False:
            out.append(f"{name}: NOT TRUSTWORTHY (expected error {r.validity:.0%})")
        if r.diverged:
            out.append(f"{name}: the predicted curve diverges")
    if not math.isfinite(signals.get("stability", 0.0)):
        out.append("stability: could not be measured")
    return out
