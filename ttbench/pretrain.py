"""`python -m ttbench.pretrain`: pretrain the default model on its source task and cache it.

Runs automatically on first use of `python -m ttbench.run`; this entry point does it ahead of
time (for example before a sweep, so parallel jobs do not all pretrain at once).
"""

from __future__ import annotations

import logging

import hydra
from omegaconf import DictConfig

from ttbench import build
from ttbench.cli import CONF_DIR, guarded, validated

log = logging.getLogger(__name__)


@hydra.main(version_base=None, config_path=str(CONF_DIR), config_name="config")
def app(cfg: DictConfig) -> None:
    validated(cfg)
    build.pretrained_model(cfg)
    spec = build.pretrain_spec(cfg)
    log.info("pretrained model ready: %s", spec.filename())


if __name__ == "__main__":
    guarded(app)
