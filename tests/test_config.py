import pytest
import torch
from omegaconf import OmegaConf

from tests.conftest import compose_cfg
from ttbench.build import cpu_threads
from ttbench.cli import CONF_DIR
from ttbench.validate import ConfigError, config_groups, predictor_names, validate


def test_every_config_group_option_composes_and_validates():
    groups = config_groups(CONF_DIR)
    assert {"dataset", "model", "optim", "predictor"} <= set(groups)
    for group, options in groups.items():
        for option in options:
            extra = {"closed_form": ["loss=mse"], "subset": ["loss=mse"], "sde": ["optim=sgd"]}.get(
                option, []
            )
            extra += ["optim=sgd"] if option in ("exact_sgd", "sgd") else []
            if group == "dataset" and option != "digits":
                extra += ["model=resnet18"]
            if group == "model" and option != "small_resnet":
                extra += ["dataset=cifar10"]
            cfg = compose_cfg([f"{group}={option}", *extra])
            validate(cfg)
            assert OmegaConf.to_container(cfg, resolve=True)


@pytest.mark.parametrize(
    ("override", "key"),
    [
        ("lr=0", "lr"),
        ("lr=-1", "lr"),
        ("momentum=1.0", "momentum"),
        ("momentum=-0.1", "momentum"),
        ("steps=0", "steps"),
        ("eps=[0.1,1.0]", "eps"),
        ("eps=[0]", "eps"),
        ("task.k=11", "task.k"),
        ("task.n=0", "task.n"),
        ("loss=hinge", "loss"),
        ("lr=fast", "lr"),
        ("theta.mode=dense", "theta.mode"),
        ("predictor.names=[ode,magic]", "predictor.names"),
        ("predictor=closed_form", "predictor"),
        ("weight_decay=0.01", "weight_decay"),
        ("optim.eval_every=7", "optim.eval_every"),
        ("optim.smooth=4", "optim.smooth"),
        ("predictor=exact_sgd", "predictor"),
    ],
)
def test_bad_values_name_key_and_value(override, key):
    with pytest.raises(ConfigError) as e:
        validate(compose_cfg([override]))
    message = str(e.value)
    assert message.startswith(f"{key}=") and "\n" not in message


def test_all_predictors_skip_closed_form_under_cross_entropy():
    assert predictor_names(compose_cfg(["predictor=all"])) == ["ode", "discrete"]
    assert predictor_names(compose_cfg(["predictor=all", "loss=mse"])) == [
        "ode",
        "discrete",
        "closed_form",
        "subset",
    ]
    assert predictor_names(compose_cfg(["predictor=none"])) == []
    assert predictor_names(compose_cfg(["predictor=all", "optim=sgd"])) == [
        "ode",
        "discrete",
        "sde",
        "exact_sgd",
    ]


def test_a_slurm_job_uses_only_its_cpus(monkeypatch):
    before = torch.get_num_threads()
    try:
        monkeypatch.setenv("SLURM_CPUS_PER_TASK", "1")
        assert cpu_threads() == 1 == torch.get_num_threads()
        monkeypatch.delenv("SLURM_CPUS_PER_TASK")
        torch.set_num_threads(before)
        assert cpu_threads() == before  # outside SLURM torch's own choice stands
    finally:
        torch.set_num_threads(before)
