"""`python -m ttbench.pretrain`: pretrain the default model on its source task and cache it, and
print its accuracy on the held-out images of that task (the strength of the pretraining).

Runs automatically on first use of `python -m ttbench.run`; this entry point does it ahead of
time (for example before a sweep, so parallel jobs do not all pretrain at once).
"""

from __future__ import annotations

if __name__ == "__main__":  # a bad command line answered before the imports below load torch
    from ttbench.cli import check_argv

    check_argv()

import logging

import hydra
from omegaconf import DictConfig

from ttbench import build, cli
from ttbench.config import CONF_DIR
from ttbench.validate import validate

log = logging.getLogger(__name__)


@hydra.main(version_base=None, config_path=str(CONF_DIR), config_name="config")
def app(cfg: DictConfig) -> None:
    with cli.job(cfg):
        spec = validate(cfg)
        model = build.pretrained_model(spec)
    if spec.model.pretrain is not None:
        log.info("pretrained model ready: %s", build.pretrain_spec(spec).filename())
        accuracy, n = build.held_out_accuracy(spec, model)
        print(
            f"pretrained {spec.model.name} on {spec.model.pretrain.dataset}'s source part: "
            f"{accuracy:.1%} accuracy on its {n} held-out images"
        )


if __name__ == "__main__":  # not in a run's directory: ${out_root}/pretrain
    cli.main(app, run_dir="${out_root}/pretrain")
