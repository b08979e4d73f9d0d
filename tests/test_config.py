import pytest
from omegaconf import OmegaConf

from tests.conftest import compose_cfg
from ttbench.cli import CONF_DIR
from ttbench.validate import ConfigError, config_groups, validate


def test_every_config_group_option_composes_and_validates():
    groups = config_groups(CONF_DIR)
    assert {"dataset", "model", "optim", "predictor"} <= set(groups)
    for group, options in groups.items():
        for option in options:
            cfg = compose_cfg([f"{group}={option}"])
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
    ],
)
def test_bad_values_name_key_and_value(override, key):
    with pytest.raises(ConfigError) as e:
        validate(compose_cfg([override]))
    message = str(e.value)
    assert message.startswith(f"{key}=") and "\n" not in message
