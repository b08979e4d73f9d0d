"""The figures of docs/theta.md's cheap-mode sweeps and docs/refinement.md's before-training
bands, without fine-tuning anything.

    python experiments/cheap_theta.py gd 500 501      # discrete's T_eps per Θ mode against exact
    python experiments/cheap_theta.py sgd 500 501     # exact_sgd's, B 10 and 50
    python experiments/cheap_theta.py resnet 500 501  # discrete's on the fidelity_resnet preset
    python experiments/cheap_theta.py vit 500 501     # and on the fidelity_vit preset's
    python experiments/cheap_theta.py bands TABLES... # before-training band coverage
    python experiments/cheap_theta.py kernel 500 501  # kernel_change, exact and mixed modes
    python experiments/cheap_theta.py calibrations OLD.json,shipped TABLES...  # two calibrations

`gd`, `sgd`, `resnet` and `vit` predict the task of each seed (the default one, or the
preset's) at every lr and momentum of the fidelity presets in each Θ mode, and print per mode
the mean difference of the loss T_eps from the exact mode's (bias) and its mean absolute
value, in steps and relative, and the median wall-clock of the prediction. `bands` reads results
tables (python -m ttbench.collect) and prints, for the plain predictions, the share of real
loss T_eps inside the shipped calibration's band read before training (the BEFORE cells) and
read as though every signal but the stability were 0 (the former way). `kernel` fine-tunes
15 GD steps at four settings per seed and prints kernel_change = |Theta_k - Theta_0| /
|Theta_0| with both exact, with a sketched Theta_k (D0 = 16384) against an exact Theta_0,
and the sketch's own error at w_k. `calibrations` reads results tables with each calibration
named (a calibration.json, or `shipped`) and prints, per predictor, the share of real loss
T_eps inside its run band and inside its before-training band, and the predictions flagged
"not trustworthy": all of them, and those more than 50% off.
"""

from __future__ import annotations

import argparse
import itertools
import json
from pathlib import Path

import numpy as np
import pandas as pd

from ttbench import bands, build
from ttbench.bands import default_calibration
from ttbench.config import compose
from ttbench.core.curves import DEFAULT_EPS
from ttbench.core.linearize import linearize
from ttbench.core.sketch import Sketch
from ttbench.points import valid
from ttbench.prediction import at_w0
from ttbench.stages import Stages
from ttbench.train import finetune_run
from ttbench.validate import validate
from ttbench.validity import BEFORE, before, before_features, table_features

EXACT = ["theta.mode=exact"]
PROJECTED = ["theta.mode=projected"]
HYBRID = ["theta.mode=hybrid"]
GD_MODES = {
    "exact": EXACT,
    "hybrid D0=4096": HYBRID,
    "hybrid D0=1024": [*HYBRID, "theta.dim=1024"],
    "projected D0=4096": PROJECTED,
    "projected D0=8192": [*PROJECTED, "theta.dim=8192"],
    "projected D0=16384": [*PROJECTED, "theta.dim=16384"],
    "trace": ["theta.mode=trace"],
    "projected D0=1024 P=1": [*PROJECTED, "theta.dim=1024", "theta.outputs=1"],
    "projected D0=1024 P=2": [*PROJECTED, "theta.dim=1024", "theta.outputs=2"],
    "projected D0=4096 P=2": [*PROJECTED, "theta.outputs=2"],
    "projected D0=4096 P=5": [*PROJECTED, "theta.outputs=5"],
}
# subsets of GD_MODES, in the order printed
SGD_MODES = {k: GD_MODES[k] for k in ("exact", "hybrid D0=4096", "projected D0=16384",
                                       "projected D0=4096", "projected D0=4096 P=2",
                                       "projected D0=1024 P=1")}  # fmt: skip
RESNET_MODES = {k: GD_MODES[k] for k in ("exact", "hybrid D0=4096", "projected D0=16384",
                                          "projected D0=4096")}  # fmt: skip
PLAIN = ["ode", "discrete", "heavy_ball", "exact_sgd", "sde"]
REFINED = ["relin", "relin_2k", "relin_sgd", "relin_settled"]


def sweep(part: str, seeds: list[int]) -> None:
    sgd = part == "sgd"
    name = "exact_sgd" if sgd else "discrete"
    grid = {"optim.batch_size": (10, 50)} if sgd else {}
    lrs = {"sgd": (0.001, 0.003), "resnet": (0.003, 0.01)}.get(part, (0.001, 0.003, 0.01, 0.03))
    grid |= {"lr": lrs, "momentum": (0.0, 0.9)}
    modes = {"sgd": SGD_MODES, "gd": GD_MODES}.get(part, RESNET_MODES)
    rows = []
    for seed in seeds:
        base = [f"seed={seed}", f"predictor.names=[{name}]", *(["optim=sgd"] if sgd else [])]
        base += [f"experiment=fidelity_{part}"] if part in ("resnet", "vit") else []
        s = build.setup(validate(compose(base)))
        for mode, overrides in modes.items():
            for values in itertools.product(*grid.values()):
                setting = [f"{k}={v}" for k, v in zip(grid, values, strict=True)]
                spec = validate(compose([*base, *overrides, *setting]))
                stages = Stages(s.x.device)
                _, pred, _ = at_w0(spec, s.model(), s.x, s.y, stages)
                t = pred[name].curves.t_eps("loss", DEFAULT_EPS, spec.train.smooth)
                t = np.array([np.nan if v is None else v for v in t.values()], float)
                wall = sum(v["wall_s"] for v in stages.stats.values())
                rows.append({"mode": mode, "key": (seed, *values), "t": t, "s": wall})
    df = pd.DataFrame(rows)
    exact = {r.key: r.t for r in df[df["mode"] == "exact"].itertuples()}
    print(f"{name}: loss T_eps against the exact mode's, seeds {seeds}")
    for mode, part_ in df.groupby("mode", sort=False):
        d = np.concatenate([r.t - exact[r.key] for r in part_.itertuples()])
        rel = np.concatenate([(r.t - exact[r.key]) / exact[r.key] for r in part_.itertuples()])
        print(
            f"  {mode:24s} bias {np.nanmean(d):+.2f} steps ({np.nanmean(rel):+.1%}), "
            f"|diff| {np.nanmean(np.abs(d)):.2f} steps ({np.nanmean(np.abs(rel)):.1%}), "
            f"prediction {part_['s'].median():.2f} s"
        )


def coverage(tables: list[Path]) -> None:
    cal = default_calibration()
    model = cal.validity
    for table in tables:
        r = pd.read_parquet(table / "results.parquet")
        r = valid(r[(r["kind"] == "loss") & r["predictor"].isin(PLAIN)])
        r = r[r["t_pred"].notna() & r["t_real"].notna()]
        hits: dict[str, list] = {"before training": [], "as though relin agreed": []}
        for _, row in r.iterrows():
            stability = row.get("signal.stability")
            x = before_features({"stability": 0.0 if pd.isna(stability) else stability})
            name, steps = row["predictor"], int(row["cfg.steps"])
            for way, key, v in (
                ("before training", before(name), model.expected(before(name), x)),
                ("as though relin agreed", name, model.expected(name, 0 * x)),
            ):
                q = cal.band(key, "loss", row["t_pred"], v, row["cfg.model.name"], steps)
                hits[way].append(None if q is None else q[0] <= row["t_real"] <= q[2])
        for way, h in hits.items():
            known = [x for x in h if x is not None]
            print(
                f"{table}: {way}: {np.mean(known):.0%} of {len(known)} inside the band "
                f"({len(h) - len(known)} without one: wider than the budget)"
            )


def _calibration(name: str):
    if name == "shipped":
        return default_calibration()
    return bands.from_json(json.loads(Path(name).read_text()))


def _band_hits(cal, rows: pd.DataFrame) -> list[bool | None]:
    """Whether each row's real loss T_eps lies in its band (None: no band, "unknown")."""
    hits = []
    for r in rows.to_dict("records"):
        v = None if pd.isna(r["validity"]) else float(r["validity"])
        model, steps = str(r["cfg.model.name"]), int(r["cfg.steps"])
        q = cal.band(r["predictor"], "loss", float(r["t_pred"]), v, model, steps)
        hits.append(None if q is None else q[0] <= r["t_real"] <= q[2])
    return hits


def calibrations(files: list[str], tables: list[Path]) -> None:
    for table in tables:
        results = pd.read_parquet(table / "results.parquet")
        features = table_features(results)
        for name in files:
            cal = _calibration(name)
            expected = bands.expected_validity(features, cal.validity)
            ways = {
                "run": bands.with_validity(results, expected),
                "before": bands.before_validity(results, expected),
            }
            for way, rows in ways.items():
                rows = valid(rows[rows["kind"] == "loss"])
                rows = rows[rows["t_pred"].notna() & rows["t_real"].notna()]
                for predictor, part in rows.groupby("predictor"):
                    if predictor.split("@")[0] in PLAIN + REFINED:
                        hits = _band_hits(cal, part)
                        known = [h for h in hits if h is not None]
                        print(
                            f"{table} {name} {way} {predictor}: {np.mean(known):.0%} of "
                            f"{len(known)} inside the band ({len(hits) - len(known)} unknown)"
                        )
            own = expected[expected["family"] != BEFORE].merge(features)
            own = own[own["predictor"].isin(PLAIN + REFINED)]
            pairs = zip(own["predictor"], own["_v"], strict=True)
            flagged = np.array([not cal.validity.trusted(p, v) for p, v in pairs])
            far = (own["error"] > np.log(1.5)).to_numpy()
            print(
                f"{table} {name}: {flagged.mean():.0%} of {len(own)} flagged, "
                f"{flagged[far].mean():.0%} of the {far.sum()} more than 50% off"
            )


def kernel(seeds: list[int]) -> None:
    sketch_k = ["theta.mode=projected", "theta.dim=16384"]
    for seed in seeds:
        for lr, m in ((0.001, 0.0), (0.003, 0.9), (0.01, 0.0), (0.03, 0.9)):
            setting = [f"seed={seed}", f"lr={lr}", f"momentum={m}", "steps=15", *EXACT]
            spec = validate(compose(setting))
            s = build.setup(spec)
            model = s.model()
            theta = {}
            for at in ("0", "k"):
                for mode, extra in (("exact", []), ("sketched", sketch_k)):
                    th = validate(compose([*setting, *extra])).theta_at(False)
                    theta[mode, at] = _theta(model, s.x, th, seed)
                if at == "0":
                    finetune_run(spec, model, s.x, s.y)

            exact, mixed, error = (
                _change(theta, a, b)
                for a, b in (("exact", "exact"), ("sketched", "exact"), ("sketched", None))
            )
            print(
                f"seed {seed} lr {lr} momentum {m}: kernel_change exact {exact:.3f}, "
                f"mixed {mixed:.3f}; the sketch's error at w_k {error:.3f}"
            )


def _change(theta: dict, at_k: str, at_0: str | None) -> float:
    """|Theta_k - Theta_0| / |Theta_0| (at_0 None: against the exact Theta_k)."""
    a, b = theta[at_k, "k"], theta["exact", "k"] if at_0 is None else theta[at_0, "0"]
    return float((a - b).norm() / b.norm())


def _theta(model, x, th, seed: int):
    sketch = Sketch(th.sketch, th.dim, seed) if th.mode == "projected" else None
    return linearize(model, x, th.mode, sketch=sketch).full_theta().double()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument(
        "part", choices=["gd", "sgd", "resnet", "vit", "bands", "kernel", "calibrations"]
    )
    p.add_argument("args", nargs="+", help="seeds, or table folders (bands, calibrations)")
    a = p.parse_args()
    if a.part == "bands":
        coverage([Path(t) for t in a.args])
    elif a.part == "calibrations":
        calibrations(a.args[0].split(","), [Path(t) for t in a.args[1:]])
    elif a.part == "kernel":
        kernel([int(s) for s in a.args])
    else:
        sweep(a.part, [int(s) for s in a.args])


if __name__ == "__main__":
    main()
