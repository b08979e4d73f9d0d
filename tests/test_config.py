import functools
import re
from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf

from tests.conftest import compose_cfg, run_id, spec_of
from ttbench.build import cpu_threads
from ttbench.config import config_groups
from ttbench.runid import LABEL_CHARS, NOT_IDENTITY
from ttbench.settings import BY_RULE, SETTINGS, Number, Settings, declared, table
from ttbench.spec import RunSpec
from ttbench.sweep import subdir_override
from ttbench.validate import ConfigError, predictor_names, validate

ROOT = Path(__file__).resolve().parents[1]


def test_every_config_group_option_composes_and_validates():
    groups = config_groups()
    assert {"dataset", "model", "optim", "predictor"} <= set(groups)
    for group, options in groups.items():
        for option in options:
            extra = {"closed_form": ["loss=mse"], "subset": ["loss=mse"], "sde": ["optim=sgd"]}.get(
                option, []
            )
            extra += ["optim=sgd"] if option in ("exact_sgd", "sgd") else []
            extra += ["optim=sgd"] if option in ("relin_sgd",) else []
            if option == "custom":  # a plug-in names its callable
                extra += [
                    f"{group}._target_=tests.plugins.make_{'mlp' if group == 'model' else 'blobs'}"
                ]
            if group == "dataset" and option not in ("digits", "custom"):
                extra += ["model=resnet18"]
            if group == "model" and option in ("resnet18_digits", "vit_tiny", "convnext_atto"):
                extra += ["dataset.channels=3", "dataset.resolution=32"]
            elif group == "model" and option not in ("small_resnet", "custom"):
                extra += ["dataset=cifar10"]
            cfg = compose_cfg([f"{group}={option}", *extra])
            spec = validate(cfg)
            assert isinstance(spec, RunSpec)
            config = OmegaConf.to_container(cfg, resolve=True)
            config["refine"]["steps"] = spec.refine.steps  # null resolves to 10% of steps
            assert spec.config == config and spec.refine.steps == 15


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
        ("task.k=1", "task.k"),
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


def test_all_predictors_skip_those_that_do_not_apply():
    plain = ["ode", "heavy_ball", "discrete"]
    chain = ["relin", "relin_half", "relin_2k", "relin_4k", "relin_settled"]
    refined = [*chain, "rescaled", "fit_exp", "fit_power"]
    assert predictor_names(compose_cfg(["predictor=all"])) == [*plain, *refined]
    mse = predictor_names(compose_cfg(["predictor=all", "loss=mse"]))
    assert mse == [*plain, "closed_form", "subset", *refined]
    assert predictor_names(compose_cfg(["predictor=none"])) == []
    sgd = predictor_names(compose_cfg(["predictor=all", "optim=sgd"]))
    assert sgd == [*plain, "sde", "exact_sgd", *chain, "relin_sgd", *refined[5:]]
    # 4k = 60 of 50 steps: the relin that would start there does not apply
    short = predictor_names(compose_cfg(["predictor=all", "steps=50", "refine.steps=15"]))
    assert "relin_4k" not in short and "relin_2k" in short
    assert predictor_names(compose_cfg(["predictor=all", "refine.steps=0"])) == plain
    assert predictor_names(compose_cfg(["predictor=all", "steps=9"])) == plain  # k = 10% = 0


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


def test_the_spec_holds_the_configs_values_typed():
    spec = spec_of(
        ["lr=0.01", "momentum=0.5", "optim=sgd", "optim.batch_size=10", "seed=4", "eps=[0.1,0.2]"]
    )
    t = spec.train
    assert (t.optimizer, t.lr, t.momentum, t.batch_size, t.sampling) == (
        "sgd",
        0.01,
        0.5,
        10,
        "with_replacement",
    )
    assert t.dynamics == {"lr": 0.01, "momentum": 0.5, "steps": 150, "loss": "ce"}
    assert spec.seed == 4 and spec.eps == (0.1, 0.2)
    assert spec.predictors == ("ode", "discrete", "relin", "relin_sgd")  # the default
    assert spec.dataset.name == "digits" and spec.dataset.options["split_seed"] == 0
    assert spec.model.width == 48 and spec.model.pretrain.epochs == 15
    assert spec_of([]).train.batch_size is None  # GD has no batches


def test_one_identity_per_run(tmp_path):
    """The directory, the checkpoint's identity and the sweeper all leave out exactly
    NOT_IDENTITY; a default spelled out is the same run, and two values that the old
    override-string names confused (`/` as `_`) are two runs."""
    assert set(NOT_IDENTITY) == {
        "out_root",
        "tensorboard",
        "device",
        "checkpoint_s",
        "cache_dir",
        "cluster",
        "threads",
        "plan",
        "hydra",
    }
    ignored = ["device=cpu", f"cache_dir={tmp_path}", "checkpoint_s=5", f"out_root={tmp_path}"]
    ignored += ["tensorboard=true"]
    ignored += ["plan.set_steps=true", "plan.margin=0.5"]  # a key below an ignored one too
    rid = run_id(["seed=2", "lr=0.01", *ignored])
    assert rid == run_id(["lr=0.01", "seed=2"]) and rid.label == "lr=0.01,seed=2"
    assert rid.digest != run_id(["lr=0.01", "seed=3"]).digest
    assert rid.config == run_id(["lr=0.01", "seed=3"]).config != run_id(["seed=2"]).config
    assert run_id([]).label == "default" and run_id(["steps=150"]).digest == run_id([]).digest
    assert run_id(["lr=0.003"]).digest == run_id([]).digest  # the default, spelled out
    assert run_id(["lr=3e-3"]).digest == run_id(["refine.steps=15"]).digest == run_id([]).digest
    folder = ["dataset=imagefolder", "dataset.resolution=16", "model=resnet18"]
    a, b = run_id([*folder, "dataset.root=/d/x/y"]), run_id([*folder, "dataset.root=/d/x_y"])
    assert a.label == b.label and a.digest != b.digest  # once one directory, now two
    long = run_id([f"probe.sizes=[{','.join(['1234'] * 60)}]"])
    assert len(long.name) <= LABEL_CHARS + 11
    cfg = compose_cfg(["seed=2", "lr=0.01", *ignored], hydra=True)
    assert cfg.hydra.run.dir == f"{tmp_path}/runs/{rid.name}"
    assert subdir_override(["seed=2", "lr=0.01", *ignored], tmp_path, compose_cfg) == (
        f"hydra.sweep.subdir='{rid.name}'"
    )
    (tmp_path / "runs" / f"seed=2,lr=0.010-{rid.digest}").mkdir(parents=True)  # found by digest
    again = compose_cfg(["seed=2", "lr=0.01", f"out_root={tmp_path}"], hydra=True)
    assert again.hydra.run.dir == f"{tmp_path}/runs/seed=2,lr=0.010-{rid.digest}"
    a, b = spec_of(["seed=2"]), spec_of(["seed=2", *ignored])
    assert a.identity() == b.identity() and a.identity() != spec_of(["seed=3"]).identity()
    assert not set(a.identity()) & set(NOT_IDENTITY)


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["model=resnet18_digits"], "model='resnet18' is invalid: takes 3-channel images"),
        (["model=resnet18", "model.pretrained=maybe"], "model.pretrained='maybe' is invalid"),
        (["model=resnet18_digits", "dataset=cifar10"], "needs model.pretrain settings and"),
    ],
)
def test_own_pretrained_resnets_are_checked(overrides, message):
    with pytest.raises(ConfigError, match=message.replace("(", r"\(")):
        validate(compose_cfg(overrides))


def test_one_theta_spec_at_w0_at_w_k_and_for_the_plan():
    spec = spec_of(["theta.mode=trace", "theta.outputs=2", "refine.theta=projected"])
    assert spec.theta_at(refined=False).mode == "trace" and spec.theta.directions == 2
    at_k = spec.theta_at(refined=True)
    assert at_k.mode == "projected" and at_k.unsketched().mode == "trace"
    assert spec_of([]).theta.directions is None  # exact: every class
    plan = spec_of(["plan.theta.dim=512"]).plan.theta  # the plan's own, over theta.*
    assert (plan.mode, plan.dim, plan.outputs, plan.block) == ("hybrid", 512, None, 128)
    assert plan.unsketched().mode == "exact"
    plan = spec_of(["theta.dim=8192", "plan.theta.mode=projected", "plan.theta.outputs=1"])
    assert (plan.plan.theta.dim, plan.plan.theta.unsketched().mode) == (8192, "trace")
    hybrid = spec_of(["theta.mode=hybrid"]).theta  # every class, part of it sketched
    assert hybrid.directions is None and hybrid.unsketched().mode == "exact"
    with pytest.raises(ConfigError, match=r"theta\.outputs=1 is invalid"):
        spec_of(["theta.mode=hybrid", "theta.outputs=1"])


def _leaves(node: dict, prefix: str = "") -> dict:
    out = {}
    for key, value in node.items():
        if isinstance(value, dict) and value:
            out |= _leaves(value, f"{prefix}{key}.")
        else:
            out[f"{prefix}{key}"] = value
    return out


@functools.cache
def _every_setting() -> dict[str, list[str]]:
    """Each setting of the configs, with the group choices of one composed config that has it."""
    groups = config_groups()
    found: dict[str, list[str]] = {}
    for choice in [[]] + [[f"{g}={o}"] for g in ("dataset", "model", "optim") for o in groups[g]]:
        config = OmegaConf.to_container(compose_cfg(choice), resolve=False)
        for key in _leaves({k: v for k, v in config.items() if k != "hydra"}):
            found.setdefault(key, choice)
    return found


def test_every_setting_is_declared_once_with_its_rule():
    """SETTINGS (type and range, one line each) and BY_RULE (checked against other settings)
    cover every key of every config group option, and name no key the configs lack; every
    setting outside the groups has its meaning beside its rule."""
    found = _every_setting()
    covered = set(SETTINGS) | {k for k in found if k.startswith(BY_RULE)}
    assert sorted(set(found) - covered) == []
    assert sorted(set(SETTINGS) - set(found)) == []
    assert not set(SETTINGS) & set(BY_RULE)
    fields = declared()
    assert len(fields) >= 45 and all(len(f.metadata["doc"]) > 10 for f in fields.values())
    groups = ("dataset", "model", "optim", "predictor")
    outside = [k for k in found if k.split(".")[0] not in groups]  # plan.theta.mode: plan.theta

    def under(key: str, name: str) -> bool:
        return key == name or key.startswith(f"{name}.")

    assert all(any(under(k, name) for name in fields) for k in outside)
    assert all(any(under(k, name) for k in outside) for name in fields)


def test_the_settings_table_of_the_docs_is_the_schemas():
    """docs/settings.md is `python -m ttbench.settings`: regenerate it when a setting changes."""
    doc = (ROOT / "docs" / "settings.md").read_text()
    assert table() in doc
    assert Settings().out_root == "outputs" and Settings().theta.dim == 4096


def test_every_number_refuses_nan_and_inf_and_a_string_naming_itself():
    """On the command line and in Python alike (both compose): a typed setting never holds a
    string, nan or inf, and the message is the setting's own, not Hydra's."""
    found = _every_setting()
    numbers = [k for k, rule in SETTINGS.items() if isinstance(rule, Number)]
    assert len(numbers) >= 40
    for key in numbers:
        integer = SETTINGS[key].integer
        for bad, says in (("nan", "finite"), ("inf", "finite"), ("-inf", "finite"),
                          ("abc", "")):  # fmt: skip
            says = "integer" if integer else says
            with pytest.raises(ConfigError, match=f"^{re.escape(key)}=.* is invalid: .*{says}"):
                validate(compose_cfg([*found[key], f"{key}={bad}"]))


@pytest.mark.parametrize(
    ("override", "says"),
    [
        ("tensorboard=yes", "tensorboard='yes' is invalid: must be true or false"),
        ("eps=0.1", "eps=0.1 is invalid: must be a non-empty list of numbers in (0, 1)"),
        ("eps=[0.1,0.1]", "eps=[0.1, 0.1] is invalid: every value must be different"),
        ("probes=[foo]", "probes=['foo'] is invalid: every value must be one of clustering"),
        ("theta=5", "theta=5 is invalid: is a group of settings: set one of theta.mode, "),
        ("plan.theta=5", "plan.theta=5 is invalid: is a group of settings: set one of plan.theta"),
        ("task=3", "task=3 is invalid: is a group of settings: set one of task.k, task.n"),
    ],
)
def test_a_value_of_the_wrong_kind_is_one_line_naming_its_setting(override, says):
    """Before the typed schema, the last three were tracebacks (an int has no attribute 'k'),
    and Hydra's merge would turn `tensorboard=yes` into true."""
    with pytest.raises(ConfigError) as e:
        compose_cfg([override])
    assert str(e.value).startswith(says)
