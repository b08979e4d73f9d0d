"""What the Hydra entry points share: where the configs live, and one-line errors."""

from __future__ import annotations

import hashlib
import sys
from collections.abc import Callable
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from ttbench.validate import ConfigError, check_cli, validate

CONF_DIR = Path(__file__).resolve().parent.parent / "conf"


def run_name(overrides: str) -> str:
    """A run directory's name from its overrides (Hydra's override_dirname): deterministic, so
    a run started again finds its own record; 'default' for none, hashed when too long."""
    name = overrides.replace("/", "_") or "default"
    if len(name) > 200:
        name = f"{name[:150]}-{hashlib.sha1(name.encode()).hexdigest()[:12]}"
    return name


OmegaConf.register_new_resolver("run_name", run_name, replace=True)


def fail(error: Exception) -> None:
    print(f"ttbench: error: {error}", file=sys.stderr)
    raise SystemExit(2)


def validated(cfg: DictConfig) -> None:
    """Validate a composed config, or fail with its one-line message."""
    try:
        validate(cfg)
    except ConfigError as e:
        fail(e)


def guarded(app: Callable[[], None]) -> None:
    """Check the command line, then run the Hydra app (which validates its config itself)."""
    try:
        default_out = OmegaConf.load(CONF_DIR / "config.yaml").out_root
        check_cli(sys.argv[1:], CONF_DIR, default_out)
    except ConfigError as e:
        fail(e)
    app()
