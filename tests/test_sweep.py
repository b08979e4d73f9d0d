"""Sweeps: ttbench's sweeper checks every job first, names and reports them; a sweep killed
half-way and started again loses, duplicates and corrupts nothing, and the run killed
mid-fine-tuning resumes from its checkpoint to the record of an uninterrupted sweep;
`python -m ttbench.sweep` lists and deletes incomplete run directories."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
import torch

from tests.conftest import TINY, compose_cfg, run_cli, run_dir, run_in_process
from ttbench import sweep
from ttbench.collect import gather
from ttbench.run import STATE

SWEEP = [*TINY[:-1], "steps=400", "checkpoint_s=0", "predictor=discrete", "seed=0,1,2"]


def _run_dir(out: Path, seed: int) -> Path:
    (run,) = [p for p in (out / "runs").iterdir() if f"seed={seed}" in p.name]
    return run


def _step_of(state: Path | None) -> int:
    """The step a checkpoint was saved at; -1 when there is none, or it went away (the run
    finished) or is being replaced between the glob and the read."""
    try:
        return -1 if state is None else torch.load(state, weights_only=True)["t"]
    except (OSError, RuntimeError, EOFError):
        return -1


def _kill_when_resumable(out: Path, cwd: Path, cache: Path) -> None:
    """Start the sweep and SIGKILL it once seed 1 has a checkpoint past step 50."""
    env = {**os.environ, "TTBENCH_CACHE": str(cache)}
    cmd = [sys.executable, "-m", "ttbench.run", "-m", *SWEEP, f"out_root={out}"]
    proc = subprocess.Popen(cmd, cwd=cwd, env=env, start_new_session=True,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip
    deadline = time.monotonic() + 240
    try:
        while time.monotonic() < deadline and proc.poll() is None:
            if _step_of(next((out / "runs").glob(f"*seed=1*/{STATE}"), None)) > 50:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
                return
            time.sleep(0.05)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    pytest.fail("the sweep ended before seed 1 had a checkpoint to resume from")


@pytest.mark.slow
def test_killed_sweep_restarts_without_loss_duplication_or_corruption(tmp_path, cache_dir):
    ref, out = tmp_path / "ref", tmp_path / "out"
    for seed in (0, 1, 2):  # the uninterrupted sweep's records, made in-process
        job = [*SWEEP[:-1], f"seed={seed}"]
        run_in_process(job, run_dir(ref / "runs", job), cache_dir)

    _kill_when_resumable(out, tmp_path, cache_dir)
    first = _run_dir(out, 0)
    assert (first / "done").is_file() and not (_run_dir(out, 1) / "done").exists()
    assert not list((out / "runs").glob("*seed=2*"))
    before = (first / "result.json").stat().st_mtime_ns

    again = run_cli("ttbench.run", "-m", *SWEEP, f"out_root={out}", cwd=tmp_path, cache=cache_dir)
    assert again.returncode == 0, again.stderr
    assert (first / "result.json").stat().st_mtime_ns == before  # complete run not repeated
    c = gather([out])
    results, problems = c.results, c.problems
    assert problems == [] and results["run"].nunique() == 3  # none lost, none corrupt
    for seed in (0, 1, 2):
        run, want = _run_dir(out, seed), _run_dir(ref, seed)
        got, exp = (json.loads((d / "result.json").read_text()) for d in (run, want))
        assert not (run / STATE).exists()
        if seed != 1:
            assert got["real"]["resumed_at"] is None
        else:
            assert 50 < got["real"]["resumed_at"] < 400
        assert got["real"]["t_eps"] == exp["real"]["t_eps"]
        assert got["predictors"]["discrete"]["t_eps"] == exp["predictors"]["discrete"]["t_eps"]
        pd.testing.assert_frame_equal(
            pd.read_parquet(run / "curves.parquet"), pd.read_parquet(want / "curves.parquet")
        )


def test_sweep_status_and_the_incomplete_runs_command(tmp_path, cache_dir, capsys):
    root = tmp_path / "runs"
    jobs = [[*TINY, f"seed={seed}"] for seed in (1, 2, 3)]
    run_in_process(jobs[0], run_dir(root, jobs[0]), cache_dir)
    started = run_dir(root, jobs[1])
    (started / ".hydra").mkdir(parents=True)  # started, never finished
    for name, files in (("planned", ["plan.json", "plan.log"]), ("planning", ["plan.log"])):
        (root / "plans" / name / ".hydra").mkdir(parents=True)  # a plan's jobs: no runs
        for f in files:
            (root / "plans" / name / f).write_text("{}")
    s = sweep.status(root, jobs, compose_cfg)
    assert [s.count(k) for k in (sweep.DONE, sweep.INCOMPLETE, sweep.NOT_STARTED)] == [1, 1, 1]
    assert s.line().startswith(f"sweep of 3 jobs in {root}: 1 done (skipped), 1 incomplete")
    capsys.readouterr()
    assert sweep.main([str(root)]) == 0
    printed = capsys.readouterr().out
    assert "2 run directories, 1 complete, 1 incomplete" in printed
    assert f"incomplete: {started}" in printed and started.exists()
    assert sweep.main([str(root), "--delete"]) == 0
    assert f"deleted: {started}" in capsys.readouterr().out
    assert not started.exists() and (run_dir(root, jobs[0]) / "done").is_file()
    assert (root / "plans" / "planned" / "plan.json").is_file()  # never taken for a run
    assert (root / "plans" / "planning" / "plan.log").is_file()
    assert sweep.main([str(tmp_path / "nowhere")]) == 2


def test_a_sweeps_values_are_checked_as_a_single_runs_naming_the_job(tmp_path, cache_dir):
    """A value of a sweep is checked against its setting's rule before Hydra merges it into
    the typed schema, which would have read `yes` as true; the process boundary is the point
    (Hydra's multirun and the sweeper)."""
    out = tmp_path / "out"
    bad = run_cli("ttbench.run", "-m", *TINY, "tensorboard=false,yes", f"out_root={out}",
                  cwd=tmp_path, cache=cache_dir)  # fmt: skip
    assert bad.returncode == 2 and not (out / "runs").exists()
    assert bad.stderr.strip().splitlines()[-1] == (
        f"ttbench: error: job #1 ({' '.join([*TINY, 'tensorboard=yes', f'out_root={out}'])}): "
        "tensorboard='yes' is invalid: must be true or false"
    )
