"""Sweeps: what ttbench's Hydra sweeper does before launching (hydra_plugins/ttbench_sweeper),
and `python -m ttbench.sweep`, which lists incomplete run directories and deletes them on
request.

Before the first job starts, the sweeper composes and validates every job of the sweep (a bad
value in any job stops the sweep with one line, having run nothing) and prints how many of its
jobs are done (they will be skipped), incomplete (they resume or start again) and not started.
Each job's directory is the one its identity (ttbench.runid) gives it.
"""

from __future__ import annotations

import argparse
import math
import shutil
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from omegaconf import DictConfig

from ttbench import cli, record
from ttbench.files import Busy, locked
from ttbench.runid import RunId
from ttbench.validate import ConfigError, validate

DONE, INCOMPLETE, NOT_STARTED = "done", "incomplete", "not started"
Compose = Callable[[list[str]], DictConfig]  # a job's overrides -> its composed config


def run_id(job: Sequence[str], compose: Compose) -> RunId:
    return RunId.of(validate(compose(list(job))).config, job)


def subdir_override(job: Sequence[str], root: Path, compose: Compose) -> str:
    """The Hydra override that puts a job into its own run directory."""
    return f"hydra.sweep.subdir='{run_id(job, compose).directory(root).name}'"


def state(run_dir: Path) -> str:
    if record.complete(run_dir) is not None:
        return DONE
    return INCOMPLETE if run_dir.exists() else NOT_STARTED


@dataclass(frozen=True)
class Status:
    root: Path
    jobs: dict[str, str]  # run directory name -> state

    def count(self, which: str) -> int:
        return sum(1 for s in self.jobs.values() if s == which)

    def line(self) -> str:
        n = len(self.jobs)
        return (
            f"sweep of {n} job{'s' * (n != 1)} in {self.root}: {self.count(DONE)} done "
            f"(skipped), {self.count(INCOMPLETE)} incomplete (resumed or redone), "
            f"{self.count(NOT_STARTED)} not started"
        )


def status(root: Path, jobs: Iterable[Sequence[str]], compose: Compose) -> Status:
    dirs = [run_id(job, compose).directory(root) for job in jobs]
    return Status(Path(root), {d.name: state(d) for d in dirs})


def check_jobs(jobs: Sequence[Sequence[str]], compose: Compose) -> None:
    """Compose and validate every job; ConfigError names the first bad job."""
    for i, job in enumerate(jobs):
        try:
            validate(compose(list(job)))
        except ConfigError as e:
            raise ConfigError(f"job #{i} ({' '.join(job)}): {e.key}", e.value, e.allowed) from e


def before_launch(jobs: Sequence[Sequence[str]], root: Path, compose: Compose) -> Status:
    """Check every job, then print and return the sweep's status."""
    check_jobs(jobs, compose)
    s = status(root, jobs, compose)
    print(s.line(), flush=True)
    return s


def from_plan(
    jobs: Sequence[Sequence[str]], table: str, set_steps: bool, compose: Compose
) -> list[tuple[int, list[list[str]]]]:
    """The jobs grouped by the time limit in minutes that the plan (ttbench.plan) gives each,
    shortest first: planned_limit_s with `set_steps` (and steps=planned_steps added to the
    job), limit_s otherwise. ConfigError for a job the plan does not hold."""
    import pandas as pd  # here: the sweeper plugin imports this module at every Hydra start

    from ttbench.plan import read_table

    plan = read_table(table)
    rows = plan[plan["target"]].set_index("run_id")
    groups: dict[int, list[list[str]]] = {}
    for job in jobs:
        rid = run_id(job, compose)
        if rid.digest not in rows.index:
            raise ConfigError(
                "plan.table", table, f"holds no job {rid.name}: plan this sweep first"
            )
        row = rows.loc[rid.digest]
        name = rid.name
        limit = row["limit_s"]
        if set_steps:
            if pd.isna(row["planned_steps"]):
                raise ConfigError(
                    "plan.set_steps", True, f"job {name} is not predicted to reach the target"
                )
            job = [o for o in job if not o.lstrip("+").startswith("steps=")]
            job.append(f"steps={int(row['planned_steps'])}")
            limit = row["planned_limit_s"]
        groups.setdefault(max(1, math.ceil(limit / 60)), []).append(list(job))
    return sorted(groups.items())


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        description="List the run directories below DIR that hold no complete record "
        "(killed, failed or still running), and delete them with --delete."
    )
    p.add_argument("dirs", nargs="*", type=Path, default=[Path("outputs/runs")])
    p.add_argument("--delete", action="store_true", help="delete the incomplete directories")
    a = p.parse_args(argv)
    missing = [d for d in a.dirs if not d.is_dir()]
    if missing:
        return cli.error(f"no such directory: {missing[0]}")
    runs = record.run_dirs(a.dirs)
    bad = [d for d in runs if record.complete(d) is None]
    print(f"{len(runs)} run directories, {len(runs) - len(bad)} complete, {len(bad)} incomplete")
    for d in bad:
        try:
            with locked(d):  # never delete a run that another process is running
                if a.delete:
                    shutil.rmtree(d)
                print(f"{'deleted' if a.delete else 'incomplete'}: {d}")
        except Busy:
            print(f"running: {d}")
    return 0


if __name__ == "__main__":
    cli.command(main)
