"""The record of one run, typed: `Record` (result.json) and its curves (curves.parquet), with the
one writer (`write`) and the one reader (`read`, `read_curves`) that run, collect, the figures
and the notebooks use.

result.json (format 2) holds per curve kind a list of T_eps aligned with `eps`. curves.parquet
is long-format, one row per (curve, quantile, step): `curve` ("real" or a predictor),
`quantile` (NaN for the curve itself, 0.05 / 0.95 for a stochastic predictor's per-step
band), `step`, `loss`, `error`. Format 1 (eps as string keys, bands named "sde:q05") was only
ever written by development versions: it is refused with a line saying so. result.json is
written after the curves, then the empty `done` marker, so a run directory with `done` holds a
complete record.
"""

from __future__ import annotations

import io
import json
import platform
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from ttbench.core.curves import CONVERGED, EXPLODED, QUANTILES, Curves, relative_error
from ttbench.errors import WriteError
from ttbench.files import atomic_write
from ttbench.stages import ALONG, FINETUNE

FORMAT_VERSION = 2
RESULT = "result.json"
CURVES = "curves.parquet"
DONE = "done"  # written last: its presence means the record is complete
KINDS = ("loss", "error")
BAND = (QUANTILES[0], QUANTILES[-1])  # the per-step band of a stochastic predictor's paths

Times = dict[str, tuple[int | None, ...]]  # curve kind -> T_eps per eps, in steps


@dataclass(frozen=True)
class Quantiles:
    """5/50/95% quantiles of a predicted T_eps, in steps; None is "never" (beyond every
    diverged path, or no band at all when all three are None)."""

    q05: float | None
    q50: float | None
    q95: float | None

    def covers(self, t: int | None) -> bool | None:
        """Whether the 5-95% band holds the real time (None: no real time or no band)."""
        if t is None or self.q05 is None:
            return None
        return bool(self.q05 <= t and (self.q95 is None or t <= self.q95))


@dataclass(frozen=True)
class PredictorRecord:
    kind: str  # deterministic | stochastic (ttbench.predictors)
    t_eps: Times
    diverged: bool
    stages: tuple[str, ...]  # the stages its T_eps needed: their wall-clock is its cost
    paths: int | None = None
    quantiles: dict[str, tuple[Quantiles, ...]] | None = None  # of the sample paths, per eps
    band: dict[str, tuple[Quantiles, ...]] | None = None  # model-error band (ttbench.bands)
    validity: float | None = None  # its expected error, |log| (ttbench.validity)
    trusted: bool | None = None  # False: "not trustworthy" (validity above the model's limit)
    k: int | None = None  # refined: the step it starts from (it observed the steps before)
    signals: tuple[str, ...] = ()  # what its validity reads on the fine-tuning, counted apart


@dataclass(frozen=True)
class Real:
    t_eps: Times
    diverged: bool  # exploded: no T_eps (ttbench.core.curves)
    resumed_at: int | None = None  # the step fine-tuning resumed from, after preemption
    outcome: str = CONVERGED  # converged | catapult | exploded (ttbench.core.curves.outcome)
    spike_at: int | None = None  # the step at which the loss spiked (catapult or explosion)
    stopped_at: int | None = None  # the step at which an explosion stopped the fine-tuning

    @classmethod
    def of(cls, curves: Curves, eps: Iterable[float], window: int, resumed_at: int | None):
        """The real run's record from its curves (T_eps and spikes read after smoothing)."""
        return cls(
            t_eps(curves, eps, window),
            curves.diverged,
            resumed_at,
            curves.outcome(window),
            curves.spike_at(window),
            curves.stopped_at,
        )


@dataclass(frozen=True)
class Watched:
    """The stability watched along the real fine-tuning, and what it announced
    (ttbench.core.stability.forecast): a spike ahead at step `at`, or nothing."""

    stability: dict[int, float]  # watched step -> lr lambda_max / (2 (1 + m))
    verdict: str  # converges | spike ahead
    at: int | None
    threshold: float


@dataclass(frozen=True)
class TaskInfo:
    dataset: str
    classes: tuple[int, ...]
    N: int
    C: int
    D: int  # trainable weights


@dataclass(frozen=True)
class Record:
    config: dict[str, Any]
    overrides: tuple[str, ...]
    versions: dict[str, str]
    device: str
    cpu_threads: int
    task: TaskInfo
    stages: dict[str, dict[str, float]]  # stage -> wall_s, peak_rss_mb, start_rss_mb[, cuda]
    eps: tuple[float, ...]
    real: Real
    predictors: dict[str, PredictorRecord]
    probes: dict[str, str] = field(default_factory=dict)  # probe -> its table's file name
    # diagnostics of the prediction (ttbench.prediction): stability, drift, kernel_change, ...
    signals: dict[str, float] = field(default_factory=dict)
    watch: Watched | None = None
    format_version: int = FORMAT_VERSION

    @property
    def seed(self) -> int:
        return self.config["seed"]

    def timing(self, name: str) -> dict[str, float | None]:
        """A predictor's cost: the wall-clock of each stage its T_eps needed and their sum
        `predict_s`, of each signal its validity reads and their sum `signals_s`, `total_s`
        (both), and fine-tuning over `predict_s` and over `total_s`. None: nothing computed."""
        p = self.predictors[name]
        own = {f"{s}_s": self.stages[s]["wall_s"] for s in p.stages}
        signals = {f"{s}_s": self.stages[s]["wall_s"] for s in p.signals if s in self.stages}
        predict = sum(own.values()) if own else None
        total = None if predict is None else predict + sum(signals.values())
        finetune = self.stages.get(FINETUNE, {}).get("wall_s")
        return {
            **own,
            **signals,
            "predict_s": predict,
            "signals_s": sum(signals.values()),
            "total_s": total,
            "finetune_over_predict": finetune / predict if finetune and predict else None,
            "finetune_over_total": finetune / total if finetune and total else None,
        }

    def errors(self, name: str, kind: str) -> list[tuple[int | None, float | None]]:
        """Per eps: |t_pred - t_real| in steps and relative to t_real (None when undefined)."""
        pred, real = self.predictors[name].t_eps[kind], self.real.t_eps[kind]
        return [
            (None if p is None or r is None else abs(p - r), relative_error(p, r))
            for p, r in zip(pred, real, strict=True)
        ]

    def rows(self) -> list[dict[str, Any]]:
        """One results-table row per (predictor, curve kind, eps); config values are left to
        the caller (see ttbench.collect)."""
        t = self.task
        base = {
            "dataset": t.dataset,
            "classes": ",".join(map(str, t.classes)),
            "N": t.N,
            "C": t.C,
            "D": t.D,
            "device": self.device,
            "finetune_s": self.stages[FINETUNE]["wall_s"],
            "real_diverged": self.real.diverged,
            "real_outcome": self.real.outcome,
            "real_spike_at": self.real.spike_at,
            "real_stopped_at": self.real.stopped_at,
            **{f"signal.{k}": v for k, v in self.signals.items()},
            "forecast": None if self.watch is None else self.watch.verdict,
            "forecast_at": None if self.watch is None else self.watch.at,
        }
        rows = []
        none = Quantiles(None, None, None)
        for name, pred in self.predictors.items():
            timing = self.timing(name)
            for kind in KINDS:
                errors = self.errors(name, kind)
                for i, e in enumerate(self.eps):
                    t_real = self.real.t_eps[kind][i]
                    b = pred.band[kind][i] if pred.band else none
                    q = pred.quantiles[kind][i] if pred.quantiles else none
                    rows.append(
                        {
                            **base,
                            "predictor": name,
                            "kind": kind,
                            "eps": e,
                            "t_real": t_real,
                            "t_pred": pred.t_eps[kind][i],
                            "pred_diverged": pred.diverged,
                            "abs_err": errors[i][0],
                            "rel_err": errors[i][1],
                            "q05": b.q05,
                            "q50": b.q50,
                            "q95": b.q95,
                            "covered": b.covers(t_real),
                            "path_q05": q.q05,
                            "path_q50": q.q50,
                            "path_q95": q.q95,
                            "path_covered": q.covers(t_real),
                            "validity": pred.validity,
                            "trusted": pred.trusted,
                            "k": pred.k,
                            "predict_s": timing["predict_s"],
                            "signals_s": timing["signals_s"],
                        }
                    )
        return rows


def t_eps(curves: Curves, eps: Iterable[float], window: int = 1) -> Times:
    """T_eps of both curve kinds, per eps, in steps."""
    eps = list(eps)
    return {kind: tuple(curves.t_eps(kind, eps, window).values()) for kind in KINDS}


# --- JSON -----------------------------------------------------------------------------------


def _to_json(rec: Record) -> dict[str, Any]:
    """result.json's content; errors, timing and coverage are derived, for readers of the file."""
    out: dict[str, Any] = {
        "format_version": FORMAT_VERSION,
        "config": rec.config,
        "overrides": list(rec.overrides),
        "seed": rec.seed,
        "versions": rec.versions,
        "device": rec.device,
        "cpu_threads": rec.cpu_threads,
        "task": {**rec.task.__dict__, "classes": list(rec.task.classes)},
        "stages": rec.stages,
        "eps": list(rec.eps),
        "curves_file": CURVES,
        "real": {
            "diverged": rec.real.diverged,
            "outcome": rec.real.outcome,
            "spike_at": rec.real.spike_at,
            "stopped_at": rec.real.stopped_at,
            "resumed_at": rec.real.resumed_at,
            "t_eps": {k: list(v) for k, v in rec.real.t_eps.items()},
        },
        "predictors": {},
        "probes": rec.probes,
        "signals": rec.signals,
    }
    if rec.watch is not None:
        w = rec.watch
        out["watch"] = {
            "stability": {str(t): _finite(v) for t, v in w.stability.items()},
            "verdict": w.verdict,
            "at": w.at,
            "threshold": w.threshold,
        }
    for name, p in rec.predictors.items():
        entry: dict[str, Any] = {
            "kind": p.kind,
            "diverged": p.diverged,
            "t_eps": {k: list(v) for k, v in p.t_eps.items()},
            "errors": {k: [{"abs": a, "rel": r} for a, r in rec.errors(name, k)] for k in KINDS},
            "stages": list(p.stages),
            "signals": list(p.signals),
            "timing": rec.timing(name),
        }
        if p.quantiles is not None:
            entry["paths"] = p.paths
            entry["quantiles"] = _quantiles_json(p.quantiles, rec.real.t_eps)
        if p.band is not None:
            entry["band"] = _quantiles_json(p.band, rec.real.t_eps)
        if p.validity is not None:
            entry["validity"] = p.validity
        if p.trusted is not None:
            entry["trusted"] = p.trusted
        if p.k is not None:
            entry["k"] = p.k
        out["predictors"][name] = entry
    return out


def _finite(v: float) -> float | None:
    """A float JSON can hold: None for NaN and infinities (a stability past an explosion)."""
    return v if np.isfinite(v) else None


def _watched(d: Mapping[str, Any] | None) -> Watched | None:
    if d is None:
        return None
    values = {int(t): float("nan") if v is None else float(v) for t, v in d["stability"].items()}
    return Watched(values, d["verdict"], d["at"], float(d["threshold"]))


def _quantiles_json(qs: dict[str, tuple[Quantiles, ...]], real: Times) -> dict[str, list]:
    return {
        k: [{**q.__dict__, "covered": q.covers(t)} for q, t in zip(v, real[k], strict=True)]
        for k, v in qs.items()
    }


def _times(d: Mapping[str, Any]) -> Times:
    return {k: tuple(v) for k, v in d.items()}


def _quantiles(d: Mapping[str, Any]) -> dict[str, tuple[Quantiles, ...]]:
    return {k: tuple(Quantiles(q["q05"], q["q50"], q["q95"]) for q in v) for k, v in d.items()}


def _real(d: Mapping[str, Any]) -> Real:
    """The real run; records from before outcomes were recorded read as converged or exploded."""
    outcome = d.get("outcome", EXPLODED if d["diverged"] else CONVERGED)
    return Real(
        _times(d["t_eps"]),
        d["diverged"],
        d["resumed_at"],
        outcome,
        d.get("spike_at"),
        d.get("stopped_at"),
    )


def from_json(d: Mapping[str, Any]) -> Record:
    """A Record from result.json's content (format 2)."""
    version = d.get("format_version")
    if version == 1:
        raise ValueError("a format 1 record, written by a development version: run it again")
    if version != FORMAT_VERSION:
        raise ValueError(f"unknown record format version {version!r}")
    predictors = {}
    for name, p in d["predictors"].items():
        quantiles = p.get("quantiles")
        predictors[name] = PredictorRecord(
            kind=p.get("kind", "stochastic" if quantiles else "deterministic"),
            t_eps=_times(p["t_eps"]),
            diverged=p["diverged"],
            # records written before the signals were counted apart list them among the stages
            stages=tuple(s for s in p["stages"] if s not in ALONG),
            signals=tuple(p.get("signals", (s for s in p["stages"] if s in ALONG))),
            paths=p.get("paths"),
            quantiles=None if quantiles is None else _quantiles(quantiles),
            band=_quantiles(p["band"]) if "band" in p else None,
            validity=p.get("validity"),
            trusted=p.get("trusted"),
            k=p.get("k"),
        )
    t = d["task"]
    return Record(
        config=d["config"],
        overrides=tuple(d["overrides"]),
        versions=d["versions"],
        device=d["device"],
        cpu_threads=d.get("cpu_threads", 0),
        task=TaskInfo(t["dataset"], tuple(t["classes"]), t["N"], t["C"], t["D"]),
        stages=d["stages"],
        eps=tuple(float(e) for e in d["eps"]),
        real=_real(d["real"]),
        predictors=predictors,
        probes=d.get("probes", {}),
        signals=d.get("signals", {}),
        watch=_watched(d.get("watch")),
        format_version=version,
    )


# --- curves ---------------------------------------------------------------------------------


def curves_frame(
    curves: Mapping[str, Curves], bands: Mapping[str, Mapping[float, Curves]] | None = None
) -> pd.DataFrame:
    """The long-format curves table of a run (module docstring)."""
    items = [(name, np.nan, c) for name, c in curves.items()]
    items += [(name, q, c) for name, by_q in (bands or {}).items() for q, c in by_q.items()]
    frames = [
        pd.DataFrame(
            {
                "curve": name,
                "quantile": q,
                "step": np.arange(len(c.loss)) * c.interval,
                "loss": c.loss,
                "error": c.error,
            }
        )
        for name, q, c in items
    ]
    return pd.concat(frames, ignore_index=True)


def check_curves(frame: pd.DataFrame) -> pd.DataFrame:
    """The curves table, or a ValueError naming the columns it lacks."""
    missing = sorted({"curve", "quantile", "step", "loss", "error"} - set(frame))
    if missing:
        raise ValueError(f"the curves table has no column {', '.join(missing)}")
    return frame


def _curves_of(frame: pd.DataFrame, diverged: Mapping[str, bool]) -> dict[str, Curves]:
    out = {}
    for name, part in frame.groupby("curve", sort=False):
        part = part.sort_values("step")
        steps = part["step"].to_numpy()
        interval = int(steps[1] - steps[0]) if len(steps) > 1 else 1
        flag = bool(diverged.get(str(name), False))
        out[str(name)] = Curves(part["loss"].to_numpy(), part["error"].to_numpy(), flag, interval)
    return out


def read_curves(
    path: Path, diverged: Mapping[str, bool] | None = None
) -> tuple[dict[str, Curves], dict[str, dict[float, Curves]]]:
    """(curves by name, bands by name and quantile) of a curves.parquet."""
    frame = check_curves(pd.read_parquet(path))
    main = frame[frame["quantile"].isna()]
    curves = _curves_of(main, diverged or {})
    bands: dict[str, dict[float, Curves]] = {}
    for (name, q), part in frame[frame["quantile"].notna()].groupby(["curve", "quantile"]):
        bands.setdefault(str(name), {})[float(q)] = _curves_of(part, {})[str(name)]
    return curves, bands


# --- files ----------------------------------------------------------------------------------


def write_table(path: Path, frame: pd.DataFrame) -> None:
    """One table of the record, atomically; WriteError when it cannot be written."""
    buf = io.BytesIO()
    frame.to_parquet(buf, index=False)
    try:
        atomic_write(path, buf.getvalue())
    except OSError as e:
        raise WriteError(f"cannot write {path} ({e})") from e


def write(
    run_dir: Path,
    rec: Record,
    curves: Mapping[str, Curves],
    bands: Mapping[str, Mapping[float, Curves]] | None = None,
) -> None:
    """The run's curves, then result.json, then the `done` marker, each atomically; a write
    that fails leaves no `done` marker and raises WriteError."""
    run_dir = Path(run_dir)
    text = json.dumps(_to_json(rec), indent=2, allow_nan=False) + "\n"
    write_table(run_dir / CURVES, curves_frame(curves, bands))
    try:
        atomic_write(run_dir / RESULT, text.encode())
        atomic_write(run_dir / DONE, b"")
    except OSError as e:
        raise WriteError(f"cannot write the record into {run_dir} ({e})") from e


def read(run_dir: Path) -> Record:
    """The run's Record; OSError or ValueError (incl. a JSON error) when it cannot be read."""
    try:
        return from_json(json.loads((Path(run_dir) / RESULT).read_text()))
    except (KeyError, TypeError, AttributeError) as e:  # a record missing what format 1/2 hold
        raise ValueError(f"malformed record ({type(e).__name__}: {e})") from e


def is_done(run_dir: Path) -> bool:
    """The done marker is there (the record may still be damaged: see `complete`)."""
    return (Path(run_dir) / DONE).is_file()


def complete(run_dir: Path) -> Record | None:
    """The run's record when the run is complete: its done marker, and every file of the
    record reads back (result.json, the curves, its probe tables); None otherwise (the run is
    to be done again)."""
    run_dir = Path(run_dir)
    if not is_done(run_dir) or not (run_dir / CURVES).is_file():
        return None
    try:
        rec = read(run_dir)
        check_curves(pd.read_parquet(run_dir / CURVES))
        for name in rec.probes.values():
            pd.read_parquet(run_dir / name)
    except (OSError, ValueError):  # pyarrow's errors are ValueErrors
        return None
    return rec


PLAN_FILES = ("plan.json", "plan.log")  # a planned job's (ttbench.plan), never a run's


def run_dirs(roots: Iterable[Path]) -> list[Path]:
    """Run directories below the roots: those Hydra made (.hydra) or holding a record, less
    the directories of planned jobs (`python -m ttbench.plan`), which hold no run."""
    found = set()
    for root in roots:
        for marker in (".hydra", RESULT):
            found.update(p.parent for p in Path(root).rglob(marker))
    return sorted(d for d in found if not any((d / f).exists() for f in PLAN_FILES))


def spectra_frame(spectra: Mapping[str, np.ndarray]) -> pd.DataFrame:
    """Long format, one row per (series, k) with k from 1."""
    return pd.concat(
        [
            pd.DataFrame({"series": name, "k": np.arange(1, len(v) + 1), "value": v})
            for name, v in spectra.items()
        ],
        ignore_index=True,
    )


def versions() -> dict[str, str]:
    out = {"python": platform.python_version(), "platform": platform.platform()}
    for pkg in ("ttbench", "torch", "torchvision", "numpy", "scipy", "hydra-core", "pandas"):
        try:
            out[pkg] = metadata.version(pkg)
        except metadata.PackageNotFoundError:
            out[pkg] = "not installed"
    return out
