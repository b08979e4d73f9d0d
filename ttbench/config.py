"""Where the Hydra configs live (inside the package, so `pip install .` carries them), how a run
directory is named, and composing a config without Hydra's command line (notebooks, tests,
benchmarks):

    spec = ttbench.validate.validate(ttbench.config.compose(["lr=0.01", "seed=3"]))
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

from hydra import compose as hydra_compose
from hydra import initialize_config_dir
from hydra.errors import ConfigCompositionException
from omegaconf import DictConfig, OmegaConf

from ttbench import settings
from ttbench.runid import RunId

CONF_DIR = Path(__file__).resolve().parent / "conf"
RUN_DIR_RESOLVER = "ttbench.run_dir"


def _run_dir(root: str, task: list[str], *, _root_: DictConfig) -> str:
    """`${ttbench.run_dir:ROOT,${hydra.overrides.task}}`: the run's directory under ROOT, by
    its identity (ttbench.runid) from the validated config (the entry points have validated it
    before Hydra resolves this)."""
    from ttbench.validate import validate  # validate composes with this module: no cycle

    return str(RunId.of(validate(_root_).config, task).directory(root))


def register_resolvers() -> None:
    """Make `${ttbench.run_dir:...}` (config.yaml's run directory) known to OmegaConf. Called by
    the entry points and `compose`, never on import; sweep jobs get their directory's name
    from the sweeper instead (hydra_plugins/ttbench_sweeper), so job processes need nothing."""
    if not OmegaConf.has_resolver(RUN_DIR_RESOLVER):
        OmegaConf.register_new_resolver(RUN_DIR_RESOLVER, _run_dir)


# config.yaml starts from the schema: stored on import, as a job process (a launcher's worker
# composing its job again) needs it before anything of ttbench's runs
settings.register()


def compose(overrides: Iterable[str] = (), hydra: bool = False) -> DictConfig:
    """The run config for these overrides, as `python -m ttbench.run` composes it; with `hydra`
    the `hydra` node is kept (and hydra.overrides.task filled). A value its setting refuses
    raises ConfigError."""
    register_resolvers()
    overrides = list(overrides)
    settings.check_overrides(overrides)
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base=None):
        try:
            return hydra_compose("config", overrides=overrides, return_hydra_config=hydra)
        except ConfigCompositionException as e:
            raise settings.refused(e) from None


def config_groups() -> dict[str, list[str]]:
    """Options of each config group, from the files under CONF_DIR."""
    return {
        d.name: sorted(p.stem for p in d.glob("*.yaml"))
        for d in sorted(CONF_DIR.iterdir())
        if d.is_dir()
    }
