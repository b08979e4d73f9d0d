"""ttbench's sweeper: Hydra's basic sweeper, plus what ttbench.sweep adds before and while
launching. It lives here because Hydra only instantiates plugins from `hydra_plugins`."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from hydra._internal.core_plugins.basic_sweeper import BasicSweeper
from hydra.core.override_parser.overrides_parser import OverridesParser


class TtbenchSweeper(BasicSweeper):
    """Every job is validated and the sweep's status printed before the first job starts, and
    each job runs in the directory that ttbench.config.run_name gives its overrides."""

    def sweep(self, arguments: list[str]) -> Any:
        from ttbench import cli, sweep  # at sweep time: plugin discovery imports this module

        loader = self.hydra_context.config_loader
        parsed = OverridesParser.create(config_loader=loader).parse_overrides(
            [*self._parse_config(), *arguments]
        )
        jobs = [job for batch in self.split_arguments(parsed, None) for job in batch]
        with cli.one_line_errors():
            sweep.before_launch(
                jobs,
                Path(self.config.hydra.sweep.dir),
                lambda job: loader.load_sweep_config(self.config, job),
            )
        return super().sweep(arguments)

    def get_job_batch(self) -> Sequence[Sequence[str]]:
        from ttbench.sweep import subdir_override

        return [[*job, subdir_override(job)] for job in super().get_job_batch()]
