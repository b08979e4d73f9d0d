"""ttbench's sweeper: Hydra's basic sweeper, plus what ttbench.sweep adds before and while
launching. It lives here because Hydra only instantiates plugins from `hydra_plugins`."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from hydra._internal.core_plugins.basic_sweeper import BasicSweeper
from hydra.core.override_parser.overrides_parser import OverridesParser

log = logging.getLogger(__name__)


class TtbenchSweeper(BasicSweeper):
    """Every job is validated and the sweep's status printed before the first job starts, and
    each job runs in the directory its identity (ttbench.runid) gives it. With
    plan.table (ttbench.plan) the jobs are launched in groups sharing a time limit, which a
    launcher with one (submitit's timeout_min) takes, and with plan.set_steps each job's
    steps come from the plan."""

    limits: list[int] | None = None  # per batch, when launching from a plan

    def sweep(self, arguments: list[str]) -> Any:
        from ttbench import cli, sweep  # at sweep time: plugin discovery imports this module

        loader = self.hydra_context.config_loader
        parsed = OverridesParser.create(config_loader=loader).parse_overrides(
            [*self._parse_config(), *arguments]
        )
        with cli.one_line_errors():
            jobs = [job for batch in self.split_arguments(parsed, None) for job in batch]
            sweep.before_launch(jobs, Path(self.config.hydra.sweep.dir), self._compose)
        return super().sweep(arguments)

    def _compose(self, job: list[str]) -> Any:
        """A job's config, composed once: the checks, the status, the plan's grouping and the
        job's directory all read it (composing costs ~50 ms a job)."""
        cache = self.__dict__.setdefault("_composed", {})
        key = tuple(job)
        if key not in cache:
            from hydra.errors import ConfigCompositionException

            from ttbench.settings import check_overrides, refused

            check_overrides(job)  # before Hydra converts a value (`tensorboard=yes`: true)
            try:
                cache[key] = self.hydra_context.config_loader.load_sweep_config(
                    self.config, list(job)
                )
            except ConfigCompositionException as e:
                raise refused(e) from None
        return cache[key]

    def split_arguments(self, overrides: Any, max_batch_size: int | None) -> list[list[list[str]]]:
        batches = super().split_arguments(overrides, max_batch_size)
        plan = self.config.get("plan", {})
        if plan.get("table") is None:
            return batches
        from ttbench.sweep import from_plan

        jobs = [job for batch in batches for job in batch]
        groups = from_plan(jobs, plan.table, bool(plan.set_steps), self._compose)
        self.limits = [minutes for minutes, _ in groups]
        return [group for _, group in groups]

    def get_job_batch(self) -> Sequence[Sequence[str]]:
        from ttbench.sweep import subdir_override

        index = self.batch_index
        batch = super().get_job_batch()
        if self.limits is not None:
            params = getattr(self.launcher, "params", None)
            if isinstance(params, dict) and "timeout_min" in params:
                params["timeout_min"] = self.limits[index]
                log.info(
                    "%d jobs with a time limit of %d min (plan)", len(batch), params["timeout_min"]
                )
            else:
                log.warning("this launcher has no time limit: the plan's limits do not apply")
        root = Path(self.config.hydra.sweep.dir)
        return [[*job, subdir_override(job, root, self._compose)] for job in batch]
