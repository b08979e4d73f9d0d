"""Sweeps on a real SLURM scheduler: a single-node cluster on localhost (tests/slurm/up.sh),
driven through Hydra's submitit launcher (cluster=localhost). Needs root and Debian's packages;
skipped, with the reason, where either is missing."""

import json
import math
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
import torch

from tests.conftest import REPO, TINY
from ttbench.collect import gather
from ttbench.run import STATE

SCRIPTS = REPO / "tests" / "slurm"
BASE = ["cluster=localhost", *TINY[:-1], "checkpoint_s=0", "predictor=discrete"]


@pytest.fixture(scope="module")
def slurm():
    """The localhost cluster: brought up here unless it already was, and then stopped again
    (down.sh stops only the daemons up.sh started, by their recorded PIDs)."""
    if os.geteuid() != 0:
        pytest.skip("the localhost SLURM cluster needs root (it writes /etc/slurm and /run/munge)")
    if shutil.which("apt-get") is None and shutil.which("slurmctld") is None:
        pytest.skip("neither SLURM nor apt-get (to install Debian's SLURM packages) is available")
    was_up = subprocess.run(["scontrol", "ping"], capture_output=True).returncode == 0 if (
        shutil.which("scontrol")) else False  # fmt: skip
    up = subprocess.run([SCRIPTS / "up.sh"], capture_output=True, text=True, timeout=600)
    if up.returncode == 3:
        pytest.skip(f"Debian's SLURM packages are unavailable: {up.stderr.strip()[-300:]}")
    assert up.returncode == 0, up.stdout + up.stderr
    yield
    if not was_up:
        subprocess.run([SCRIPTS / "down.sh"], capture_output=True, timeout=120)


def _launch(out: Path, cache: Path, *overrides: str) -> subprocess.Popen:
    env = {**os.environ, "TTBENCH_CACHE": str(cache), "PYTHONUNBUFFERED": "1"}
    cmd = [sys.executable, "-m", "ttbench.run", "-m", *BASE, *overrides, f"out_root={out}"]
    return subprocess.Popen(
        cmd, cwd=out.parent, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )


def _wait_for(what: str, check, timeout: float = 180):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = check()
        if value:
            return value
        time.sleep(0.1)
    pytest.fail(f"timed out waiting for {what}")


def _job_id(out: Path) -> str | None:
    """The SLURM id of a one-job sweep, from submitit's folder (one sub-folder per job)."""
    jobs = [p.name for p in (out / "runs" / ".submitit").glob("*") if p.is_dir()]
    return jobs[0] if jobs else None


def _progress(out: Path) -> int:
    """The fine-tuning step of the sweep's run's last checkpoint (0 when none yet)."""
    state = next((out / "runs").glob(f"*/{STATE}"), None)
    try:
        return torch.load(state, weights_only=True)["t"] if state else 0
    except (OSError, RuntimeError, EOFError):  # replaced while being read
        return 0


def _sacct_state(job: str) -> str:
    out = subprocess.run(
        ["sacct", "-n", "-X", "-P", "-o", "State", "-j", job], capture_output=True, text=True
    ).stdout.split()
    return out[0] if out else ""


def _record(out: Path, seed: int) -> tuple[dict, pd.DataFrame]:
    (run,) = [p for p in (out / "runs").iterdir() if f"seed={seed}," in p.name]
    return json.loads((run / "result.json").read_text()), pd.read_parquet(run / "curves.parquet")


@pytest.mark.slow
def test_sweep_cancel_and_requeue_on_a_real_scheduler(slurm, tmp_path, cache_dir):
    # a 2-job sweep (one job array): both records land
    sweep = tmp_path / "sweep"
    proc = _launch(sweep, cache_dir, "steps=1000", "seed=0,1")
    log = proc.communicate(timeout=400)[0]
    assert proc.returncode == 0, log
    c = gather([sweep])
    results, problems = c.results, c.problems
    assert problems == [] and results["run"].nunique() == 2

    # a third job, cancelled while it fine-tunes, and a fourth, preempted (submitit's protocol:
    # SIGTERM then USR2) after a checkpoint, which submitit requeues and which resumes
    cancel, requeue = tmp_path / "cancel", tmp_path / "requeue"
    doomed = _launch(cancel, cache_dir, "steps=20000", "seed=2")
    resumed = _launch(requeue, cache_dir, "steps=1000", "seed=1")
    job = _wait_for("the requeue job's checkpoint", lambda: _progress(requeue) > 100 and (
        _job_id(requeue)))  # fmt: skip
    for sig in ("SIGTERM", "USR2"):
        subprocess.run(["scancel", "--signal", sig, job], check=True)
    victim = _wait_for("the cancel job's checkpoint", lambda: _progress(cancel) and (
        _job_id(cancel)))  # fmt: skip
    subprocess.run(["scancel", victim], check=True)

    log = doomed.communicate(timeout=300)[0]
    assert doomed.returncode != 0 and "CANCELLED" in log, log
    assert _wait_for("sacct to record the cancellation", lambda: (
        _sacct_state(victim).startswith("CANCELLED")), timeout=60)  # fmt: skip
    problems = gather([cancel]).problems
    assert len(problems) == 1 and "incomplete" in problems[0]

    log = resumed.communicate(timeout=400)[0]
    assert resumed.returncode == 0, log
    got, got_curves = _record(requeue, 1)
    want, want_curves = _record(sweep, 1)
    assert 100 < got["real"]["resumed_at"] < 1000
    assert got["cpu_threads"] == 1  # the job's one CPU (cluster=localhost), not the node's
    assert got["real"]["t_eps"] == want["real"]["t_eps"]
    assert got["predictors"]["discrete"]["t_eps"] == want["predictors"]["discrete"]["t_eps"]
    pd.testing.assert_frame_equal(got_curves, want_curves)
    assert _wait_for("sacct to record completion", lambda: _sacct_state(job) == "COMPLETED", 60)


@pytest.mark.slow
def test_a_plan_sets_each_jobs_time_limit_on_a_real_scheduler(slurm, tmp_path, cache_dir):
    """`ttbench.plan` plans a sweep as SLURM jobs; the sweep launched from the plan takes each
    job's planned steps and time limit (3 minutes here, against the cluster's 20). Not 1: under
    a 1-minute limit SLURM signals the job within 15-25 s (the cluster's signal_delay_s and
    slurmctld's 30-s checks), and a job slower than that to start failed the test."""
    env = {**os.environ, "TTBENCH_CACHE": str(cache_dir)}
    out = tmp_path / "out"
    sweep = [*BASE, "steps=40", "seed=0,1", f"out_root={out}", "plan.overhead_s=150"]

    def cli(module, *args):
        done = subprocess.run([sys.executable, "-m", module, *args], cwd=tmp_path, env=env,
                              capture_output=True, text=True, timeout=400)  # fmt: skip
        assert done.returncode == 0, done.stdout + done.stderr

    cli("ttbench.plan", "-m", *sweep)
    (path,) = out.glob("plans/*/plan.parquet")
    assert len([p for p in out.glob("plans/*/.submitit/*_*") if p.is_dir()]) == 2  # on SLURM
    cli("ttbench.run", "-m", *sweep, f"plan.table={path}", "plan.set_steps=true")
    plan = pd.read_parquet(path).query("target")
    runs = [p for p in (out / "runs").iterdir() if p.is_dir() and p.name[0] != "."]
    assert len(runs) == 2
    for run in runs:  # each ran the steps the plan gave its seed
        cfg = json.loads((run / "result.json").read_text())["config"]
        planned = plan.loc[plan["cfg.seed"].astype(int) == cfg["seed"], "planned_steps"]
        assert cfg["steps"] == int(planned.iloc[0]) and f"steps={cfg['steps']}" in run.name
    sacct = ["sacct", "-n", "-X", "-P", "-o", "Timelimit", "-j"]
    jobs = [j.name for j in (out / "runs" / ".submitit").iterdir() if j.is_dir() and "_" in j.name]
    limits = [subprocess.run([*sacct, j], capture_output=True, text=True).stdout for j in jobs]
    limits = [limit.strip() for limit in limits]
    want = [f"00:{math.ceil(s / 60):02d}:00" for s in plan["planned_limit_s"]]
    assert sorted(limits) == sorted(want) == ["00:03:00", "00:03:00"]
