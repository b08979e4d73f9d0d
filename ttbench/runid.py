"""One identity per run (Dora's XP signature, DomainBed's Job): built once from the resolved
settings that change a result, so a default spelled out on the command line is the same run and
two different values never share a directory.

A run directory is named `<label>-<digest>`: the label is the overrides that set the run
(readable, not unique: `/` becomes `_`, cut at LABEL_CHARS), the digest a short hash of the
canonical identity (unique), taken from the validated config (`RunSpec.config`, where defaults
that depend on others are filled in: `refine.steps` null is 10% of `steps`).
`RunId.directory(root)` finds a run's existing directory by its digest, whatever its label
says, so `steps=5` and `steps=5 lr=0.003` (the default) find one directory. The sweep's
status, the plan, judge and collect all join runs on the digest, and configurations (a run
less its seed and its predictors) on `RunId.config`.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from hydra.core.override_parser.overrides_parser import OverridesParser
from omegaconf import DictConfig, OmegaConf

# Settings that never change a run's result: where it writes, on what it runs, how often it
# checkpoints, which cluster, plan-only settings (and Hydra's own node).
NOT_IDENTITY = (
    "out_root",
    "tensorboard",
    "device",
    "checkpoint_s",
    "cache_dir",
    "cluster",
    "threads",
    "plan",
    "hydra",
)
NOT_CONFIGURATION = ("seed", "predictor")  # the seeds of a sweep share a configuration
DIGEST_CHARS = 10
LABEL_CHARS = 120


def _canonical(value: Any) -> Any:
    """One spelling per value: sorted keys, lists for tuples, whole floats as ints (steps=5
    and steps=5.0 are one run), non-finite floats as strings (JSON has none)."""
    if isinstance(value, Mapping):
        return {str(k): _canonical(v) for k, v in sorted(value.items(), key=lambda kv: str(kv[0]))}
    if isinstance(value, list | tuple):
        return [_canonical(v) for v in value]
    if isinstance(value, float):
        if not math.isfinite(value):
            return repr(value)
        return int(value) if value.is_integer() else value
    if isinstance(value, Path):
        return str(value)
    return value


def digest(settings: Mapping[str, Any]) -> str:
    """A short hash of the settings' canonical JSON."""
    text = json.dumps(_canonical(settings), sort_keys=True, separators=(",", ":"))
    return hashlib.sha1(text.encode()).hexdigest()[:DIGEST_CHARS]


def resolved(config: Mapping[str, Any] | DictConfig) -> dict[str, Any]:
    """The config as plain, resolved values, less Hydra's node (which refers back to the run's
    directory, being resolved)."""
    if isinstance(config, DictConfig):
        keys = [k for k in config if k != "hydra"]
        config = OmegaConf.to_container(OmegaConf.masked_copy(config, keys), resolve=True)
    return dict(config)


def identity(config: Mapping[str, Any] | DictConfig) -> dict[str, Any]:
    """The settings that determine the run's result: the resolved config less NOT_IDENTITY."""
    return {k: v for k, v in resolved(config).items() if k not in NOT_IDENTITY}


def label(overrides: Iterable[str]) -> str:
    """The readable part of a run's directory name: its overrides that change the result,
    sorted and joined by commas as Hydra's override_dirname is; 'default' for none."""
    parsed = OverridesParser.create().parse_overrides(list(overrides))
    kept = sorted(o.input_line for o in parsed if o.key_or_group.split(".")[0] not in NOT_IDENTITY)
    text = ",".join(kept).replace("/", "_").replace("'", "").replace('"', "") or "default"
    return text[:LABEL_CHARS]


@dataclass(frozen=True)
class RunId:
    """A run's identity: `digest` names the run, `config` its configuration (the run less
    NOT_CONFIGURATION), `label` is for people."""

    digest: str
    config: str
    label: str = "default"

    @classmethod
    def of(cls, config: Mapping[str, Any] | DictConfig, overrides: Iterable[str] = ()) -> RunId:
        ident = identity(config)
        shared = {k: v for k, v in ident.items() if k not in NOT_CONFIGURATION}
        return cls(digest(ident), digest(shared), label(overrides))

    @property
    def name(self) -> str:
        return f"{self.label}-{self.digest}"

    def directory(self, root: str | Path) -> Path:
        """The run's directory under root: the existing one with its digest, else a new name."""
        root = Path(root)
        found = sorted(root.glob(f"*-{self.digest}")) if root.is_dir() else []
        found = [p for p in found if p.is_dir()]
        return found[0] if found else root / self.name


def digest_of(directory: str | Path) -> str:
    """The digest in a run directory's name."""
    return Path(directory).name.rsplit("-", 1)[-1]
