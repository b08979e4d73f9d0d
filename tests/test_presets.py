"""Experiment presets, launchers and cluster resources compose into valid run configs."""

from pathlib import Path

import pytest
from hydra.core.override_parser.overrides_parser import OverridesParser

from tests.conftest import run_id
from ttbench.config import CONF_DIR, compose
from ttbench.validate import validate

REPO = Path(__file__).resolve().parent.parent
PRESETS = sorted(p.stem for p in (CONF_DIR / "experiment").glob("*.yaml"))
PAPER = [
    *("fig1_gd", "fig1_sgd", "table1", "fig6_lr", "fig6_batch", "fig6_size", "fig2_elr"),
    *("fig4_projection", "fig4_spectrum", "fig7_subset", "fig8_noise"),
    *("fig9_weight_vs_function", "fig3_clustering"),
    *("fidelity_gd", "fidelity_lazy", "fidelity_sgd", "fidelity_resnet", "fidelity_vit"),
    "fidelity_resnet_strong",
]


def _compose(overrides: list[str]):
    return compose(overrides, hydra=True)


def _sweep(cfg) -> list[str]:
    """Every job's overrides of the preset's sweep, as the basic sweeper expands them."""
    params = cfg.hydra.sweeper.params or {}
    parsed = OverridesParser.create().parse_overrides([f"{k}={v}" for k, v in params.items()])
    jobs = [[]]
    for o in parsed:
        jobs = [[*j, f"{o.get_key_element()}={v}"] for j in jobs for v in o.sweep_string_iterator()]
    return jobs


def test_every_paper_artefact_has_a_preset_and_a_readme_entry():
    assert sorted(PAPER) == PRESETS
    readme = (REPO / "experiments" / "README.md").read_text()
    for name in PRESETS:
        assert f"experiment={name}" in readme


def _covering(jobs: list[list[str]]) -> list[list[str]]:
    """Jobs in which every value of every swept setting appears at least once."""
    seen: set[str] = set()
    out = []
    for job in jobs:
        if not seen.issuperset(job):
            out.append(job)
            seen.update(job)
    return out


@pytest.mark.parametrize("every", [pytest.param(True, marks=pytest.mark.slow), False])
@pytest.mark.parametrize("name", PRESETS)
def test_preset_jobs_are_valid_runs(name, every):
    """Each job of the sweep, composed as its own run, passes validation (the fast lane: jobs
    that take every value of every setting once)."""
    cfg = _compose([f"experiment={name}"])
    assert cfg.preset == name
    jobs = _sweep(cfg)
    assert len(jobs) >= 2
    for job in jobs if every else _covering(jobs):
        validate(_compose([f"experiment={name}", *job]))


@pytest.mark.parametrize("name", ["fig1_gd", "fig6_batch"])
def test_preset_runs_on_paper_data_by_overriding_the_dataset(name):
    cfg = _compose([f"experiment={name}", "dataset=cifar10", "model=resnet18"])
    assert cfg.dataset.name == "cifar10" and cfg.preset == name
    validate(cfg)


@pytest.mark.parametrize(
    ("overrides", "target"),
    [
        ([], "hydra._internal.core_plugins.basic_launcher.BasicLauncher"),
        (["hydra/launcher=joblib"], "hydra_plugins.hydra_joblib_launcher.joblib_launcher"),
        (["hydra/launcher=submitit_local"], "submitit_launcher.LocalLauncher"),
        (["hydra/launcher=submitit_slurm"], "submitit_launcher.SlurmLauncher"),
        (["cluster=slurm"], "submitit_launcher.SlurmLauncher"),
        (["cluster=slurm_cpu"], "submitit_launcher.SlurmLauncher"),
        (["cluster=localhost"], "submitit_launcher.SlurmLauncher"),
    ],
)
def test_one_override_selects_the_launcher(overrides, target):
    launcher = _compose(overrides).hydra.launcher
    assert target in launcher._target_
    if overrides and overrides[0].startswith("cluster="):
        assert launcher.timeout_min > 0 and launcher.mem_gb > 0 and launcher.max_num_timeout > 0
        assert "cpus_per_task" in launcher and "gpus_per_node" in launcher


def test_cluster_resources_do_not_change_the_run_directory():
    cfg = _compose(["cluster=slurm", "seed=3", "hydra.launcher.partition=gpu", "out_root=/x"])
    assert cfg.hydra.run.dir == f"/x/runs/seed=3-{run_id(['seed=3']).digest}"
    assert cfg.hydra.launcher.partition == "gpu"
