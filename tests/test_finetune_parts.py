"""Partial fine-tuning and adapters: Theta over exactly the weights that train, and the real
fine-tuning training exactly those; the timm models and LoRA end to end."""

import pytest
import torch
from torch import nn

from tests.conftest import run_in_process, spec_of
from ttbench.bench.baseline import func_theta
from ttbench.core.linearize import linearize
from ttbench.models.classifier import Classifier, set_trainable
from ttbench.models.lora import add_lora
from ttbench.settings import TRAINABLE
from ttbench.train import finetune
from ttbench.validate import ConfigError

WANT = {
    "all": {"0.weight", "0.bias", "1.weight", "1.bias", "4.base.weight", "4.base.bias",
            "4.lora_a.weight", "4.lora_b.weight", "5.weight", "5.bias"},
    "head": set(),
    "norm": {"1.weight", "1.bias", "5.weight", "5.bias"},
    "adapters": {"4.lora_a.weight", "4.lora_b.weight"},
}  # fmt: skip


@pytest.mark.parametrize("which", TRAINABLE)
def test_theta_covers_and_fine_tuning_trains_exactly_the_chosen_weights(which):
    torch.manual_seed(0)
    body = nn.Sequential(
        nn.Conv2d(2, 4, 3, padding=1), nn.GroupNorm(2, 4), nn.Tanh(), nn.Flatten(),
        nn.Linear(4 * 5 * 5, 6), nn.LayerNorm(6),
    )  # fmt: skip
    model = Classifier(body, nn.Linear(6, 3))
    add_lora(model.body, rank=2, alpha=4.0)
    nn.init.normal_(model.body[4].lora_b.weight)  # both factors with gradients
    model = model.double().eval()
    set_trainable(model, which)
    trained = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trained == {f"body.{n}" for n in WANT[which]} | {"head.weight", "head.bias"}
    x, y = torch.randn(6, 2, 5, 5, dtype=torch.float64), torch.arange(6) % 3
    theta = func_theta(model, x)  # over the requires_grad weights alone
    assert ((linearize(model, x).theta - theta).norm() / theta.norm()).item() <= 1e-10
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    finetune(model, x, y, lr=0.1, momentum=0.5, steps=3, loss="ce")
    moved = {n for n, p in model.named_parameters() if not torch.equal(p, before[n])}
    assert moved == trained


def test_adapters_start_at_the_pretrained_function_and_need_a_rank():
    torch.manual_seed(0)
    base = nn.Sequential(nn.Linear(4, 5), nn.Tanh(), nn.Linear(5, 2))
    x = torch.randn(3, 4)
    want = base(x)
    assert add_lora(base, rank=2, alpha=8.0) == ["0", "2"]
    torch.testing.assert_close(base(x), want)  # B = 0 at w0
    with pytest.raises(ConfigError, match="needs adapters"):
        spec_of(["trainable=adapters"])


VIT = ["model=vit_tiny", "dataset.resolution=16", "dataset.channels=3"]
CONVNEXT = ["model=convnext_atto", "dataset.resolution=32", "dataset.channels=3"]


@pytest.mark.slow
@pytest.mark.parametrize(
    "overrides",
    [VIT, [*VIT, "finetune=lora"], CONVNEXT, [*CONVNEXT, "finetune=norm"]],
    ids=["vit", "vit-lora", "convnext", "convnext-norm"],
)
def test_timm_models_and_adapters_run_end_to_end(overrides, tmp_path):
    """Pretrained here for one epoch on the digits' source half (cached in tmp_path)."""
    small = ["model.pretrain.epochs=1", "task.n=3", "steps=6", "predictor.names=[discrete,relin]"]
    rec = run_in_process([*overrides, *small], tmp_path / "run", tmp_path / "cache")
    assert not rec.real.diverged and not rec.predictors["discrete"].diverged
    partial = any(o.startswith("finetune=") for o in overrides)
    assert (rec.task.D < 1_000_000) == partial  # the trainable weights: all, or a few


def test_timm_weights_from_a_local_file(tmp_path):
    """model.pretrained=true reads timm's weights from model.weights through timm's loader
    (its classifier of another size dropped); a file that is not such weights is one line."""
    import timm

    from ttbench.models.zoo import WeightsNotFound, timm_classifier

    torch.manual_seed(0)
    source = timm.create_model("convnext_atto", pretrained=False)  # 1000 classes
    path = tmp_path / "convnext_atto.pth"
    torch.save(source.state_dict(), path)
    model = timm_classifier("convnext_atto", 5, weights=str(path))
    torch.testing.assert_close(model.body.stem[0].weight, source.stem[0].weight)
    assert model.head.out_features == 5
    torch.save({"nothing": torch.zeros(1)}, tmp_path / "bad.pth")
    with pytest.raises(WeightsNotFound, match="cannot be loaded"):
        timm_classifier("convnext_atto", 5, weights=str(tmp_path / "bad.pth"))
    with pytest.raises(ConfigError, match=r"set model\.weights=FILE"):
        spec_of(["model=convnext_atto", "model.pretrained=true", "dataset.channels=3"])
