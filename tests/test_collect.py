"""Deterministic run directories, skipping complete runs, and the results table."""

import shutil

import pandas as pd

from tests.conftest import TINY, run_in_process
from ttbench import record
from ttbench.collect import collect, constant_rows, gather, main
from ttbench.config import run_name


def test_records_are_collected_and_bad_directories_listed(tmp_path, cache_dir):
    out = tmp_path / "out"
    for seed in (1, 2):
        args = [*TINY, "predictor.names=[ode,discrete]", f"seed={seed}"]
        run_in_process(args, out / "runs" / run_name(args), cache_dir)
    runs = sorted(p.name for p in (out / "runs").iterdir())
    good = out / "runs" / runs[0]
    shutil.copytree(good, out / "runs" / "truncated")
    text = (out / "runs" / "truncated" / "result.json").read_text()
    (out / "runs" / "truncated" / "result.json").write_text(text[: len(text) // 2])
    shutil.copytree(good, out / "runs" / "unfinished")
    (out / "runs" / "unfinished" / "done").unlink()

    results, curves, problems = collect([out])
    assert sorted(p.split(": ")[1].split(" ")[0] for p in problems) == ["corrupt", "incomplete"]
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


def test_probe_and_spectra_tables_are_collected_and_bad_files_listed(tmp_path, cache_dir, capsys):
    out = tmp_path / "out"
    args = [*TINY, "predictor=subset", "loss=mse", "subset.n0=10", "subset.k0=5"]
    probes = ["probes=[spectrum,clustering]", "probe.sizes=[10]"]
    good = out / "runs" / "probed"
    run_in_process([*args, *probes], good, cache_dir)
    shutil.copytree(good, out / "runs" / "no_clustering")
    (out / "runs" / "no_clustering" / "probe_clustering.parquet").unlink()
    shutil.copytree(good, out / "runs" / "bad_spectrum")
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
        {"run": f"s{i}", "cfg.seed": i, "cfg.lr": 1.0, "predictor": "ode", "kind": "loss",
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
