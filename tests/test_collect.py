"""Deterministic run directories, skipping complete runs, and the results table."""

import json
import shutil
from pathlib import Path

import pandas as pd
import pytest

from tests.conftest import TINY, compose_cfg, run_dir, run_in_process
from ttbench import record
from ttbench.collect import constant_rows, gather, main, pooling_warnings
from ttbench.run import task
from ttbench.validate import ConfigError


def test_records_are_collected_and_bad_directories_listed(tmp_path, cache_dir):
    out = tmp_path / "out"
    for seed in (1, 2):
        args = [*TINY, "predictor.names=[ode,discrete]", f"seed={seed}"]
        run_in_process(args, run_dir(out / "runs", args), cache_dir)
    runs = sorted(p.name for p in (out / "runs").iterdir())
    good = out / "runs" / runs[0]
    shutil.copytree(good, out / "runs" / "truncated")
    text = (out / "runs" / "truncated" / "result.json").read_text()
    (out / "runs" / "truncated" / "result.json").write_text(text[: len(text) // 2])
    shutil.copytree(good, out / "runs" / "unfinished")
    (out / "runs" / "unfinished" / "done").unlink()
    shutil.copytree(good, out / "runs" / "no_stage")  # hand-edited records: one line each
    rec = json.loads((good / "result.json").read_text())
    del rec["stages"]["finetune"]
    (out / "runs" / "no_stage" / "result.json").write_text(json.dumps(rec))
    shutil.copytree(good, out / "runs" / "no_curve")
    curves = pd.read_parquet(good / "curves.parquet").drop(columns="curve")
    curves.to_parquet(out / "runs" / "no_curve" / "curves.parquet")

    c = gather([out])
    results, curves, problems = c.results, c.curves, c.problems
    kinds = sorted(p.split(": ")[1].split(" ")[0] for p in problems)
    assert kinds == ["corrupt", "corrupt", "corrupt", "incomplete"], problems
    assert results["run"].nunique() == 2
    assert set(results.predictor) == {"ode", "discrete", "constant"}
    assert set(results.kind) == {"loss", "error"}
    assert len(results) == 2 * 3 * 2 * 6
    # the pooled predictor: each run's other seed's real time, leave-one-out
    constant = results[results.predictor == "constant"].set_index(["run", "kind", "eps"])
    real = constant["t_real"]
    other = real.groupby(level=["kind", "eps"]).transform(lambda v: v.iloc[::-1].to_numpy())
    assert (constant["t_pred"] == other).all() and constant["predict_s"].isna().all()
    rec = record.read(good)
    for kind in record.KINDS:
        rows = results[
            (results.run == str(good)) & (results.predictor == "ode") & (results.kind == kind)
        ]
        assert tuple(rows.eps) == rec.eps
        assert tuple(rows.t_real) == rec.real.t_eps[kind]
        assert tuple(rows.t_pred) == rec.predictors["ode"].t_eps[kind]
        assert (rows["cfg.seed"] == rec.config["seed"]).all()
        assert (rows["cfg.lr"] == rec.config["lr"]).all()
    assert set(curves.run) == set(results.run)
    assert {"curve", "quantile", "step", "loss", "error"} <= set(curves)


def _copy_as(run: Path, to: Path, seed: int) -> None:
    """A copy of a run's directory that reads as another run (another seed)."""
    shutil.copytree(run, to)
    rec = json.loads((to / record.RESULT).read_text())
    rec["config"]["seed"] = seed
    (to / record.RESULT).write_text(json.dumps(rec))


def test_one_run_in_two_directories_counts_once_and_is_nobodys_other_seed(tmp_path, cache_dir):
    """The same run twice (copied, or named by an older scheme) is listed, kept once, and
    `constant` never takes a run's own copy for another seed."""
    out = tmp_path / "out"
    for seed in (1, 2):
        args = [*TINY, "predictor.names=[discrete]", f"seed={seed}"]
        run_in_process(args, run_dir(out / "runs", args), cache_dir)
    first = sorted((out / "runs").iterdir())[0]
    seed1 = [*TINY, "predictor.names=[discrete]", "seed=1"]
    assert run_dir(out / "runs", [*seed1, "lr=0.003"]) == run_dir(out / "runs", seed1)
    other = compose_cfg([*seed1[:-1], "seed=9", f"cache_dir={cache_dir}"])
    with pytest.raises(ConfigError, match="holds the record of another run"):
        task(other, run_dir(out / "runs", seed1))  # a directory picked by hand, say
    (tmp_path / "odd" / "finetune.state").mkdir(parents=True)
    with pytest.raises(ConfigError, match=r"holds a directory finetune\.state where"):
        task(other, tmp_path / "odd")  # before any compute
    shutil.copytree(first, out / "runs" / "zz_copy")
    c = gather([out])
    assert c.problems == [f"{out / 'runs' / 'zz_copy'}: the same run as {first} (counted once)"]
    assert c.results["run"].nunique() == 2 and c.results["run_id"].nunique() == 2
    assert c.results["config_id"].nunique() == 1
    results = c.results[c.results["run"] != str(out / "runs" / "zz_copy")]
    dup = pd.concat([results, results.assign(run="elsewhere")])  # a copy that slipped through
    constant = constant_rows(dup.drop_duplicates(["run", "kind", "eps"]))
    # each run's constant is the other seed's time, never its own copy's
    by_id = constant.groupby(["run_id", "kind", "eps"])["t_pred"].nunique()
    assert (by_id == 1).all()
    real = results[results.predictor == "discrete"].set_index(["run_id", "kind", "eps"])["t_real"]
    mine = constant.drop_duplicates(["run_id", "kind", "eps"]).set_index(["run_id", "kind", "eps"])
    other = real.groupby(level=["kind", "eps"]).transform(lambda v: v.iloc[::-1].to_numpy())
    assert mine["t_pred"].loc[other.index].tolist() == other.astype(float).tolist()


def test_probe_and_spectra_tables_are_collected_and_bad_files_listed(tmp_path, cache_dir, capsys):
    out = tmp_path / "out"
    args = [*TINY, "predictor=subset", "loss=mse", "subset.n0=10", "subset.k0=5"]
    probes = ["probes=[spectrum,clustering]", "probe.sizes=[10]"]
    good = out / "runs" / "probed"
    run_in_process([*args, *probes], good, cache_dir)
    _copy_as(good, out / "runs" / "no_clustering", seed=7)
    (out / "runs" / "no_clustering" / "probe_clustering.parquet").unlink()
    _copy_as(good, out / "runs" / "bad_spectrum", seed=8)
    (out / "runs" / "bad_spectrum" / "probe_spectrum.parquet").write_bytes(b"PAR1 not parquet")

    c = gather([out])
    problems = sorted(c.problems)
    assert len(problems) == 2
    assert problems[0].startswith(f"{out / 'runs' / 'bad_spectrum'}: unreadable probe_spectrum")
    assert problems[1].startswith(f"{out / 'runs' / 'no_clustering'}: missing probe_clustering")
    assert c.results["run"].nunique() == 3  # a bad probe file does not drop the run
    assert set(c.tables) == {"probe_spectrum", "probe_clustering", "spectra_subset"}
    spectrum, clustering = c.tables["probe_spectrum"], c.tables["probe_clustering"]
    assert spectrum["run"].nunique() == 2 and clustering["run"].nunique() == 2
    assert str(out / "runs" / "bad_spectrum") not in set(spectrum["run"])
    assert c.tables["spectra_subset"]["run"].nunique() == 3
    columns = ["run", "cfg.dataset.name", "cfg.seed", "cfg.lr", "cfg.momentum", "cfg.task.n"]
    assert list(spectrum.columns[:7]) == [*columns, "cfg.preset"]
    one = spectrum[spectrum["run"] == str(good)]
    expected = pd.read_parquet(good / "probe_spectrum.parquet")
    pd.testing.assert_frame_equal(one[expected.columns].reset_index(drop=True), expected)
    assert (one["cfg.task.n"] == 6).all() and (one["cfg.dataset.name"] == "digits").all()
    assert one["cfg.preset"].isna().all() and set(one["n"]) == {10, 30}

    main([str(out), "--out", str(tmp_path / "tables")])
    printed = capsys.readouterr().out
    assert "3 runs" in printed and printed.count("skipped") == 2
    for stem in ("results", "curves", *c.tables):
        assert (tmp_path / "tables" / f"{stem}.parquet").stat().st_size > 0
    back = pd.read_parquet(tmp_path / "tables" / "probe_clustering.parquet")
    assert len(back) == 2 * 30 and "grad_pc1" in back


def test_constant_says_diverges_when_most_other_seeds_exploded():
    """`constant` is what the other seeds did: the median time of those that converged, or
    "diverges" when most of them exploded (its own row never counts)."""
    rows = [
        {"run": f"s{i}", "run_id": f"s{i}", "config_id": "c", "predictor": "ode", "kind": "loss",
         "eps": 0.1, "t_real": t, "real_outcome": out, "t_pred": 5.0, "pred_diverged": False}
        for i, (t, out) in enumerate(
            [(10, "converged"), (None, "exploded"), (None, "exploded"), (30, "catapult")]
        )
    ]  # fmt: skip
    got = constant_rows(pd.DataFrame(rows)).set_index("run")
    # s0 sees 2 of 3 exploded: diverges; s1 sees 1 of 3: the median of 10 and 30
    assert got.loc["s0", "pred_diverged"] and pd.isna(got.loc["s0", "t_pred"])
    assert not got.loc["s1", "pred_diverged"] and got.loc["s1", "t_pred"] == 20
    assert got.loc["s3", "pred_diverged"]


def test_a_setting_of_two_types_across_runs_is_written(tmp_path):
    """model.pretrained is true for ImageNet weights and "ttbench" for its own: one column."""
    from ttbench.collect import Collected, write_tables

    results = pd.DataFrame({"run": ["a", "b"], "cfg.model.pretrained": [True, "ttbench"]})
    write_tables(tmp_path, Collected(results, pd.DataFrame({"x": [1]})))
    back = pd.read_parquet(tmp_path / "results.parquet")
    assert back["cfg.model.pretrained"].tolist() == ["True", "ttbench"]


def test_collect_warns_when_it_pools_runs_of_different_budgets():
    same = pd.DataFrame({"run": ["a", "b"], "cfg.steps": [150, 150]})
    assert pooling_warnings(same) == []
    mixed = pd.DataFrame({"run": ["a", "b", "c"], "cfg.steps": [150, 50, 150]})
    (line,) = pooling_warnings(mixed)
    assert "different step budgets (steps = 50, 150)" in line
