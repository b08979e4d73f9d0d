"""The record of one run: result.json and curves.parquet, written atomically.

curves.parquet is long-format, one row per (curve, step) with columns curve ("real" or a
predictor name), step, loss, error. result.json follows, then the empty `done` marker, so a
run directory with `done` holds a complete record.
"""

from __future__ import annotations

import io
import json
import os
import platform
import tempfile
from collections.abc import Iterable, Mapping
from importlib import metadata
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from ttbench.core.timing import Curves, relative_error

FORMAT_VERSION = 1
RESULT = "result.json"
CURVES = "curves.parquet"
DONE = "done"  # written last: its presence means the record is complete


def atomic_write(path: Path, data: bytes) -> None:
    """Write to a temporary file beside `path`, then rename it over `path`."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def mark_done(run_dir: Path) -> None:
    atomic_write(Path(run_dir) / DONE, b"")


def is_done(run_dir: Path) -> bool:
    return (Path(run_dir) / DONE).is_file()


def write_json(path: Path, obj: Any) -> None:
    atomic_write(path, (json.dumps(obj, indent=2, allow_nan=False) + "\n").encode())


def curves_frame(curves: Mapping[str, Curves]) -> pd.DataFrame:
    frames = [
        pd.DataFrame(
            {
                "curve": name,
                "step": np.arange(len(c.loss)) * c.interval,
                "loss": c.loss,
                "error": c.error,
            }
        )
        for name, c in curves.items()
    ]
    return pd.concat(frames, ignore_index=True)


def spectra_frame(spectra: Mapping[str, np.ndarray]) -> pd.DataFrame:
    """Long format, one row per (series, k) with k from 1."""
    return pd.concat(
        [
            pd.DataFrame({"series": name, "k": np.arange(1, len(v) + 1), "value": v})
            for name, v in spectra.items()
        ],
        ignore_index=True,
    )


def write_table(path: Path, frame: pd.DataFrame) -> None:
    buf = io.BytesIO()
    frame.to_parquet(buf, index=False)
    atomic_write(path, buf.getvalue())


def write_curves(path: Path, curves: Mapping[str, Curves]) -> None:
    write_table(path, curves_frame(curves))


def read_curves(path: Path, diverged: Mapping[str, bool] | None = None) -> dict[str, Curves]:
    df = pd.read_parquet(path)
    out = {}
    for name, part in df.groupby("curve", sort=False):
        part = part.sort_values("step")
        flag = bool(diverged.get(name, False)) if diverged else False
        steps = part["step"].to_numpy()
        interval = int(steps[1] - steps[0]) if len(steps) > 1 else 1
        out[str(name)] = Curves(part["loss"].to_numpy(), part["error"].to_numpy(), flag, interval)
    return out


def read_result(path: Path) -> dict[str, Any]:
    return json.loads(Path(path).read_text())


def t_eps_entry(
    curves: Curves, eps: Iterable[float], window: int = 1
) -> dict[str, dict[str, int | None]]:
    """{"loss"|"error": {eps: T_eps in steps}} with eps keys as strings (JSON)."""
    eps = list(eps)
    return {
        kind: {str(e): t for e, t in curves.t_eps(kind, eps, window).items()}
        for kind in ("loss", "error")
    }


def error_entry(pred: dict, real: dict) -> dict[str, dict[str, dict[str, float | None]]]:
    """Per curve kind and eps: |t_pred - t_real| in steps and relative to t_real."""
    out: dict[str, dict[str, dict[str, float | None]]] = {}
    for kind, by_eps in real.items():
        out[kind] = {}
        for e, t_real in by_eps.items():
            t_pred = pred[kind][e]
            absolute = None if t_pred is None or t_real is None else abs(t_pred - t_real)
            out[kind][e] = {"abs": absolute, "rel": relative_error(t_pred, t_real)}
    return out


def versions() -> dict[str, str]:
    out = {"python": platform.python_version(), "platform": platform.platform()}
    for pkg in ("ttbench", "torch", "torchvision", "numpy", "scipy", "hydra-core", "pandas"):
        try:
            out[pkg] = metadata.version(pkg)
        except metadata.PackageNotFoundError:
            out[pkg] = "not installed"
    return out
