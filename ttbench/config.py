"""Where the Hydra configs live (inside the package, so `pip install .` carries them), how a run
directory is named, and composing a config without Hydra's command line (notebooks, tests,
benchmarks):

    spec = ttbench.validate.validate(ttbench.config.compose(["lr=0.01", "seed=3"]))
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable
from pathlib import Path

from hydra import compose as hydra_compose
from hydra import initialize_config_dir
from hydra.core.override_parser.overrides_parser import OverridesParser
from omegaconf import DictConfig, OmegaConf

from ttbench.spec import NOT_IDENTITY

CONF_DIR = Path(__file__).resolve().parent / "conf"
RUN_NAME_RESOLVER = "ttbench.run_name"


def run_name(overrides: Iterable[str]) -> str:
    """A run directory's name from its command-line overrides: those that change the result
    (not NOT_IDENTITY), sorted and joined by commas as Hydra's override_dirname is, slashes
    replaced; 'default' for none, hashed past 200 characters. Deterministic, so a run started
    again, alone or in a sweep, finds its own record."""
    parsed = OverridesParser.create().parse_overrides(list(overrides))
    kept = sorted(o.input_line for o in parsed if o.key_or_group.split(".")[0] not in NOT_IDENTITY)
    name = ",".join(kept).replace("/", "_") or "default"
    if len(name) > 200:
        name = f"{name[:150]}-{hashlib.sha1(name.encode()).hexdigest()[:12]}"
    return name


def configuration(name: str) -> str:
    """A run's configuration: its run name less the seed, shared by the seeds of a sweep."""
    return ",".join(o for o in name.split(",") if not o.startswith("seed=")) or "default"


def register_resolvers() -> None:
    """Make `${ttbench.run_name:...}` (config.yaml's run directory) known to OmegaConf. Called by
    the entry points and `compose`, never on import; sweep jobs get their directory's name
    from the sweeper instead (hydra_plugins/ttbench_sweeper), so job processes need nothing."""
    if not OmegaConf.has_resolver(RUN_NAME_RESOLVER):
        OmegaConf.register_new_resolver(RUN_NAME_RESOLVER, lambda task: run_name(task))


def compose(overrides: Iterable[str] = (), hydra: bool = False) -> DictConfig:
    """The run config for these overrides, as `python -m ttbench.run` composes it; with `hydra`
    the `hydra` node is kept (and hydra.overrides.task filled)."""
    register_resolvers()
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base=None):
        return hydra_compose("config", overrides=list(overrides), return_hydra_config=hydra)


def config_groups() -> dict[str, list[str]]:
    """Options of each config group, from the files under CONF_DIR."""
    return {
        d.name: sorted(p.stem for p in d.glob("*.yaml"))
        for d in sorted(CONF_DIR.iterdir())
        if d.is_dir()
    }
