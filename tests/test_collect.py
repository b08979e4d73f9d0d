"""Deterministic run directories, skipping complete runs, and the results table."""

import json
import shutil

import pandas as pd

from tests.conftest import TINY, run_cli
from ttbench.collect import collect


def test_runs_are_keyed_by_overrides_skipped_when_complete_and_collected(tmp_path, cache_dir):
    out = tmp_path / "out"
    args = ["-m", *TINY, "predictor=all", "seed=1,2", f"out_root={out}"]
    first = run_cli("ttbench.run", *args, cwd=tmp_path, cache=cache_dir)
    assert first.returncode == 0, first.stderr
    runs = sorted(p.name for p in (out / "runs").iterdir() if p.is_dir())
    assert len(runs) == 2 and all("seed=" in r and "model.width=4" in r for r in runs)
    again = run_cli("ttbench.run", *args, cwd=tmp_path, cache=cache_dir)
    assert again.returncode == 0 and (again.stdout + again.stderr).count("skipped") == 2

    good = out / "runs" / runs[0]
    shutil.copytree(good, out / "runs" / "truncated")
    text = (out / "runs" / "truncated" / "result.json").read_text()
    (out / "runs" / "truncated" / "result.json").write_text(text[: len(text) // 2])
    shutil.copytree(good, out / "runs" / "unfinished")
    (out / "runs" / "unfinished" / "done").unlink()

    results, curves, problems = collect([out])
    assert sorted(p.split(": ")[1].split(" ")[0] for p in problems) == ["corrupt", "incomplete"]
    assert results["run"].nunique() == 2
    assert set(results.predictor) == {"ode", "discrete"} and set(results.kind) == {"loss", "error"}
    assert len(results) == 2 * 2 * 2 * 6
    record = json.loads((good / "result.json").read_text())
    row = results[
        (results.run == str(good)) & (results.predictor == "ode") & (results.kind == "loss")
    ]
    for _, r in row.iterrows():
        e = f"{r.eps:g}" if f"{r.eps:g}" in record["real"]["t_eps"]["loss"] else str(r.eps)
        assert r.t_real == record["real"]["t_eps"]["loss"][e]
        assert r.t_pred == record["predictors"]["ode"]["t_eps"]["loss"][e]
        assert r["cfg.seed"] == record["config"]["seed"] and r["cfg.lr"] == record["config"]["lr"]
    assert set(curves.run) == set(results.run)
    assert isinstance(curves, pd.DataFrame) and {"curve", "step", "loss", "error"} <= set(curves)
