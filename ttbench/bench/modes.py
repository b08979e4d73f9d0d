"""Cost and accuracy of each way to build Theta (Section 4, Fig. 4), on one default task.

    python -m ttbench.bench.modes [overrides...] [--dims 256,1024,4096,16384]
        [--sketches countsketch,achlioptas,gaussian] [--sizes 50,100,200,400] [--csv DIR]

Defaults to loss=mse and task.n=90 (N ~ 450) so that the subset mode applies; overrides are
those of `python -m ttbench.run`. For exact, trace, every projection and the subset mode it
prints the build time, fine-tune / predict cost ratio, Theta's relative Frobenius error and
top-eigenvalue ratio against the exact one (Fig. 4 centre), and the T_eps error of the MSE
prediction against real fine-tuning; then the power law of the spectrum of Theta / N on subsets
of growing size and the whole task (Fig. 4 right; ttbench.probes). --csv writes both tables
and the spectra.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import pandas as pd

from ttbench import build, cli
from ttbench.config import compose
from ttbench.core.curves import DEFAULT_EPS, t_eps_grid
from ttbench.core.dynamics import closed_form
from ttbench.core.linearize import linearize
from ttbench.core.sketch import Sketch
from ttbench.points import GD_TOLERANCE
from ttbench.predictors import subset_prediction
from ttbench.probes.projection import compare
from ttbench.probes.spectrum import spectrum_frame
from ttbench.stages import timed
from ttbench.train import finetune_run
from ttbench.validate import validate


def _errors(curve: np.ndarray, real: dict) -> tuple[float, float]:
    pred = t_eps_grid(curve, real)
    rel = [abs(pred[e] - t) / t for e, t in real.items() if t and pred[e] is not None]
    return float(np.mean(rel)), float(np.mean(np.array(rel) <= GD_TOLERANCE))


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("overrides", nargs="*")
    p.add_argument("--dims", default="256,1024,4096,16384")
    p.add_argument("--sketches", default="countsketch,achlioptas,gaussian")
    p.add_argument("--sizes", default="50,100,200,400")
    p.add_argument("--csv", type=Path, default=None)
    a = p.parse_args(argv)
    spec = validate(compose(["loss=mse", "task.n=90", *a.overrides]))
    s = build.setup(spec)
    x, y = s.x, s.y
    kw = spec.train.dynamics
    real, finetune_s = timed(lambda: finetune_run(spec, s.model(), x, y), x.device)
    real_t = t_eps_grid(real.loss, DEFAULT_EPS)
    print(f"N={len(y)} C={s.task.n_classes}; fine-tuning {finetune_s:.1f} s; real T_eps {real_t}")

    rows = []

    def add(mode, dim, build_s, theta, curve, exact):
        err, within = _errors(curve, real_t)
        row = {
            "mode": mode,
            "dim": dim,
            "build_s": build_s,
            "ratio": finetune_s / build_s,
            "t_eps_rel_err": err,
            "within_13": within,
        }
        if theta is not None and exact is not None:
            row["frob_err"], row["top_eig_ratio"] = compare(theta, exact)
        rows.append(row)
        print({k: round(v, 4) if isinstance(v, float) else v for k, v in row.items()}, flush=True)

    m = s.model()
    lin, sec = timed(lambda: linearize(m, x), x.device)
    add(
        "exact",
        None,
        sec,
        lin.theta,
        closed_form(lin.theta, lin.f0, y, **kw).curves.loss,
        lin.theta,
    )
    exact = lin.theta
    tr, sec = timed(lambda: linearize(m, x, "trace"), x.device)
    add(
        "trace",
        None,
        sec,
        tr.full_theta(),
        closed_form(tr.theta, tr.f0, y, **kw).curves.loss,
        exact,
    )
    for kind in a.sketches.split(","):
        for dim in map(int, a.dims.split(",")):
            sketch = Sketch(kind, dim, spec.seed)
            pr, sec = timed(lambda sk=sketch: linearize(m, x, "projected", sketch=sk), x.device)
            add(
                f"projected/{kind}",
                dim,
                sec,
                pr.theta,
                closed_form(pr.theta, pr.f0, y, **kw).curves.loss,
                exact,
            )

    (curve, _), sec = timed(lambda: subset_prediction(spec, m, x, y), x.device)
    add("subset", spec.subset.n0, sec, None, curve, None)
    table = pd.DataFrame(rows)
    print("\n" + table.to_string(index=False, float_format=lambda v: f"{v:.3g}"))

    # the spectrum probe's nested subsets (the whole task included) and power-law fits
    spectra = spectrum_frame(m, x, y, map(int, a.sizes.split(",")), spec.seed)
    fits = spectra.groupby("n", sort=True).agg(
        c=("c", "first"), s=("s", "first"), lambda1_over_N=("eigenvalue", "first")
    )
    print("\npower law of the spectrum of Theta / N (fitted over 2 <= k <= half the indices):")
    print(fits.rename_axis("N").reset_index().to_string(index=False, float_format="{:.4g}".format))
    if a.csv:
        a.csv.mkdir(parents=True, exist_ok=True)
        table.to_csv(a.csv / "modes.csv", index=False)
        spectra.to_csv(a.csv / "spectra.csv", index=False)
        print(f"wrote {a.csv}/modes.csv and spectra.csv")


if __name__ == "__main__":
    cli.command(main)
