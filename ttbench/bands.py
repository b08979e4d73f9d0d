"""Bands that hold: a 5/50/95% band for every prediction of T_eps, from the model's own error,
not from batch noise alone. Method: normalised split-conformal calibration on log residuals,
Mondrian by regime.

For a point with real time t and predicted time p, the residual is r = log((t + 1) / (p + 1)),
divided by the prediction's scale s = SIGMA0 + v, v being its validity (its expected error,
ttbench.validity). On a calibration set of such normalised residuals z = r / s, the band of a
new prediction p with scale s is

    (p + 1) exp(z_q s) - 1   for the conformal quantiles z_q at q = 5%, 50%, 95%

(finite-sample corrected: the ceil((n + 1) q)-th of n). Under exchangeability of the
calibration points and the new one it holds the real time with probability about 90%. The
median z_50 corrects a predictor's bias.

Mondrian: one set of quantiles per predictor, curve kind, model family (the model's name) and
validity level (LEVEL_EDGES), so that a band holds within each regime rather than only on
average; a cell with fewer than MIN_POINTS points falls back to the family's, then the level's,
then the predictor's. A band wider than WIDTH x the budget says nothing: it is "unknown"
(no band) instead.

Two calibrations: the one shipped with ttbench (`default_calibration`, measured on the fidelity
presets' development seeds 0-5, never on the evaluation seeds), which gives a single run its
band; and, in `python -m ttbench.collect`, leave-one-out over the other runs of the same sweep
(`loo_bands`), which adapts to a user's own model and data. `python -m ttbench.bands
TABLE_DIR --out FILE` writes a calibration from a results table.
"""

from __future__ import annotations

import argparse
import json
import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from importlib import resources
from pathlib import Path

import numpy as np
import pandas as pd

from ttbench.core.curves import QUANTILES
from ttbench.errors import CalibrationError
from ttbench.points import valid
from ttbench.validity import BEFORE, FEATURES, Model, before, fit, table_features
from ttbench.validity import from_json as validity_from_json
from ttbench.validity import to_json as validity_json

SIGMA0 = 0.05  # the scale of a prediction with validity 0, in log time
DEFAULT = "calibration.json"  # beside this module
ANY = "*"  # a Mondrian cell over every family or level
LEVEL_EDGES = (0.1, 0.3)  # validity (expected |log error|) levels: low, mid, high
MIN_POINTS = 20  # the fewest points a cell is calibrated on
WIDTH = 1.0  # a band wider than this many budgets is "unknown"


def level(validity: float | None) -> str:
    """The validity level of a prediction: low (< 0.1, about 10% expected error), mid, high."""
    if validity is None:
        return ANY
    return ("low", "mid", "high")[sum(validity >= e for e in LEVEL_EDGES)]


@dataclass(frozen=True)
class Entry:
    predictor: str
    kind: str
    z: tuple[float, float, float]  # conformal quantiles of the normalised residuals at QUANTILES
    n: int  # calibration points
    validity: float  # the typical validity, used when a run has none (no refinement)
    family: str = ANY  # the Mondrian cell: model family and validity level
    level: str = ANY


@dataclass(frozen=True)
class Calibration:
    entries: dict[tuple[str, str, str, str], Entry]  # (predictor, kind, family, level)
    source: str
    validity: Model | None = None  # the expected-error model (ttbench.validity)

    def has(self, predictor: str) -> bool:
        return any(key[0] == predictor for key in self.entries)

    def entry(self, predictor: str, kind: str, family: str, lvl: str) -> Entry | None:
        """The cell's entry, else the family's, the level's, the predictor's."""
        for key in ((family, lvl), (family, ANY), (ANY, lvl), (ANY, ANY)):
            e = self.entries.get((predictor, kind, *key))
            if e is not None:
                return e
        return None

    def band(
        self,
        predictor: str,
        kind: str,
        t_pred: float | None,
        validity: float | None,
        family: str = ANY,
        steps: int | None = None,
    ) -> tuple[float, float, float] | None:
        """(5%, 50%, 95%) of the real time, in steps; None without a prediction or an entry,
        or when the band is wider than WIDTH x `steps` ("unknown")."""
        if t_pred is None or not math.isfinite(t_pred):
            return None
        e = self.entry(predictor, kind, family, level(validity))
        if e is None:
            return None
        s = scale(e.validity if validity is None else validity)
        q = tuple(max(0.0, round((t_pred + 1) * math.exp(z * s) - 1, 1)) for z in e.z)
        if steps is not None and not q[2] - q[0] <= WIDTH * steps:
            return None
        return q


def scale(validity: float) -> float:
    return SIGMA0 + validity


def residual(t_real: np.ndarray, t_pred: np.ndarray) -> np.ndarray:
    return np.log((np.asarray(t_real, float) + 1) / (np.asarray(t_pred, float) + 1))


def conformal_quantiles(z: np.ndarray, levels: Sequence[float] = QUANTILES) -> tuple[float, ...]:
    """The finite-sample conformal quantiles of n scores: for q above 1/2 the ceil((n + 1) q)-th
    smallest (inf beyond n), below it the floor((n + 1) q)-th (-inf below 1)."""
    z = np.sort(np.asarray(z, float))
    n = len(z)
    out = []
    for q in levels:
        if q >= 0.5:
            i = math.ceil((n + 1) * q)
            out.append(float(z[i - 1]) if i <= n else math.inf)
        else:
            i = math.floor((n + 1) * q)
            out.append(float(z[i - 1]) if i >= 1 else -math.inf)
    return tuple(out)


def _points(rows: pd.DataFrame) -> pd.DataFrame:
    """Calibration points: scorable rows with a prediction and a real time, their normalised
    residual z."""
    rows = valid(rows)
    rows = rows[rows["t_pred"].notna() & rows["t_real"].notna()]
    v = rows["validity"].astype(float).fillna(0.0) if "validity" in rows else 0.0
    z = residual(rows["t_real"], rows["t_pred"]) / scale(v)
    return rows.assign(_z=np.asarray(z, float))


def calibrate(results: pd.DataFrame, source: str, model: Model | None = None) -> Calibration:
    """A calibration from a results table: per predictor and curve kind, and per Mondrian cell
    (model family, validity level) with enough points. With `model`, every prediction's
    validity is first recomputed by it (ttbench.validity), as a run would compute it."""
    if model is None:
        points = _points(results)
    else:  # validities as a run computes them; the plain predictions again as before training
        table = expected_validity(table_features(results), model)
        runs, early = with_validity(results, table), before_validity(results, table)
        points = pd.concat([_points(runs), _points(early)])
    family = points["cfg.model.name"].astype(str) if "cfg.model.name" in points else ANY
    v = points["validity"].astype(float) if "validity" in points else pd.Series(np.nan)
    points = points.assign(_family=family, _level=v.map(lambda x: level(None if pd.isna(x) else x)))
    entries = {}
    for (name, kind), part in points.groupby(["predictor", "kind"], sort=True):
        cells = [(ANY, ANY, part)]
        cells += [(f, ANY, g) for f, g in part.groupby("_family")]
        cells += [(ANY, lv, g) for lv, g in part.groupby("_level") if lv != ANY]
        cells += [(f, lv, g) for (f, lv), g in part.groupby(["_family", "_level"]) if lv != ANY]
        for fam, lv, cell in cells:
            if len(cell) < MIN_POINTS:  # too few for a 5-95% band
                continue
            vals = cell.drop_duplicates("run")["validity"].dropna()
            typical = float(vals.median()) if len(vals) else 0.0
            entries[(name, kind, fam, lv)] = Entry(
                name, kind, conformal_quantiles(cell["_z"]), len(cell), typical, fam, lv
            )
    return Calibration(entries, source, model)


def expected_validity(table: pd.DataFrame, model: Model) -> pd.DataFrame:
    """table_features' (run, predictor) rows with the validity `model` gives each (`_v`)."""
    f = table[list(FEATURES)].to_numpy(float) if len(table) else []
    expected = [model.expected(n, row) for n, row in zip(table["predictor"], f, strict=True)]
    return table[["run", "predictor", "family"]].assign(_v=expected)


def with_validity(results: pd.DataFrame, table: pd.DataFrame) -> pd.DataFrame:
    """The results with each prediction's validity as expected_validity's `table` gives it
    from the run's rows."""
    if not len(table):
        return results
    new = table.loc[table["family"] != BEFORE, ["run", "predictor", "_v"]]
    out = results.merge(new, on=["run", "predictor"], how="left")
    return out.assign(validity=out["_v"]).drop(columns="_v").set_axis(results.index)


def before_validity(results: pd.DataFrame, table: pd.DataFrame) -> pd.DataFrame:
    """The plain predictions' rows renamed to their BEFORE cells (ttbench.validity.before),
    with the validity expected_validity's `table` gives them from the stability at w0 alone."""
    table = table[table["family"] == BEFORE] if len(table) else table
    if not len(table):
        return results.iloc[:0]
    new = table[["run", "predictor", "_v"]].assign(
        _name=table["predictor"].str.removesuffix(before(""))
    )
    rows = results.merge(new, left_on=["run", "predictor"], right_on=["run", "_name"])
    return rows.assign(predictor=rows["predictor_y"], validity=rows["_v"]).drop(
        columns=["predictor_x", "predictor_y", "_name", "_v"]
    )


def loo_bands(results: pd.DataFrame, group: str = "cfg.preset") -> pd.DataFrame:
    """Per row, the band calibrated on the other runs of its sweep (rows sharing `group`),
    leaving the row's own run out: columns sweep_q05, sweep_q50, sweep_q95, sweep_covered."""
    out = pd.DataFrame(index=results.index, columns=["sweep_q05", "sweep_q50", "sweep_q95"])
    if not len(results):
        return out.assign(sweep_covered=None)
    points = _points(results)
    keys = results[group].astype(str) if group in results else pd.Series("", results.index)
    pkeys = keys.loc[points.index]
    for (sweep, name, kind), part in results.groupby([keys, "predictor", "kind"], sort=False):
        pool = points[(pkeys == sweep) & (points["predictor"] == name) & (points["kind"] == kind)]
        for run, rows in part.groupby("run", sort=False):
            z = pool.loc[pool["run"] != run, "_z"].to_numpy()
            if len(z) < 20 or rows["t_pred"].isna().all():
                continue
            v = rows["validity"].astype(float).fillna(0.0) if "validity" in rows else 0.0
            s = np.asarray(scale(v), float) * np.ones(len(rows))
            p = rows["t_pred"].astype(float).to_numpy()
            for col, zq in zip(out.columns, conformal_quantiles(z), strict=True):
                out.loc[rows.index, col] = np.maximum(0.0, (p + 1) * np.exp(zq * s) - 1)
    lo, hi = out["sweep_q05"].astype(float), out["sweep_q95"].astype(float)
    t = results["t_real"].astype(float)
    covered = ((t >= lo) & (t <= hi)).where(lo.notna() & t.notna())
    return out.astype(float).assign(sweep_covered=covered)


def to_json(cal: Calibration) -> dict:
    out = {
        "method": "normalised split-conformal on log((t_real + 1) / (t_pred + 1)), Mondrian "
        "by model family and validity level",
        "sigma0": SIGMA0,
        "source": cal.source,
        "entries": [asdict(e) for e in cal.entries.values()],
    }
    if cal.validity is not None:
        out["validity"] = validity_json(cal.validity)
    return out


def from_json(d: dict) -> Calibration:
    entries = {}
    for e in d["entries"]:
        entry = Entry(
            e["predictor"],
            e["kind"],
            tuple(e["z"]),
            e["n"],
            e["validity"],
            e.get("family", ANY),
            e.get("level", ANY),
        )
        entries[(entry.predictor, entry.kind, entry.family, entry.level)] = entry
    model = validity_from_json(d["validity"]) if "validity" in d else None
    return Calibration(entries, d["source"], model)


def shipped():
    """Where the shipped calibration is (a file of the installed package)."""
    return resources.files("ttbench").joinpath(DEFAULT)


def default_calibration() -> Calibration:
    """The calibration shipped with ttbench (module docstring); CalibrationError when it does
    not read back."""
    path = shipped()
    try:
        return from_json(json.loads(path.read_text()))
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise CalibrationError(
            f"the band calibration {path} does not read ({type(e).__name__}: {e}): reinstall "
            "ttbench, or write one with python -m ttbench.bands TABLE_DIR --out FILE"
        ) from e


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description="Write a band calibration from a results table.")
    p.add_argument("tables", type=Path, help="a folder written by python -m ttbench.collect")
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--source", default="", help="what the table holds, recorded in the file")
    a = p.parse_args(argv)
    if not (a.tables / "results.parquet").is_file():
        from ttbench import cli  # Hydra with it: not on the Python API's import path

        return cli.error(
            f"no such table: {a.tables / 'results.parquet'} (python -m ttbench.collect)"
        )
    results = pd.read_parquet(a.tables / "results.parquet")
    cal = calibrate(results, a.source or str(a.tables), fit(results))
    a.out.write_text(json.dumps(to_json(cal), indent=1) + "\n")
    print(f"{len(cal.entries)} entries -> {a.out}")
    return 0


if __name__ == "__main__":
    from ttbench import cli

    cli.command(main)
