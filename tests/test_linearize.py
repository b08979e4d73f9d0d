import contextlib

import pytest
import torch
from torch import nn

from ttbench.bench.baseline import func_theta
from ttbench.core.jacobian import ROUTES, routes
from ttbench.core.linearize import (
    OverBudget,
    block_size,
    blocked_gram,
    exact_memory_bytes,
    linearize,
)
from ttbench.core.sketch import Sketch
from ttbench.models.small_resnet import small_resnet


def explicit_theta(model: nn.Module, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """f0 and J J^T by the independent route (torch.func per-sample Jacobians)."""
    with torch.no_grad():
        f0 = model(x)
    return f0, func_theta(model, x)


def _randomise_bn(model: nn.Module) -> nn.Module:
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d | nn.BatchNorm1d):
            m.running_mean.normal_()
            m.running_var.uniform_(0.5, 2)
            nn.init.normal_(m.weight)
            nn.init.normal_(m.bias)
    return model.eval()


def conv_net() -> nn.Module:
    return nn.Sequential(
        nn.Conv2d(2, 4, 3, padding=1),
        nn.BatchNorm2d(4),
        nn.ReLU(inplace=True),
        nn.Conv2d(4, 6, 3, stride=2, padding=1, bias=False),
        nn.BatchNorm2d(6),
        nn.ReLU(),
        nn.Flatten(),
        nn.Linear(6 * 3 * 3, 7),
        nn.BatchNorm1d(7),
        nn.Tanh(),
        nn.Linear(7, 3),
    )


@pytest.fixture(params=["conv_net", "small_resnet"])
def model_and_input(request):
    torch.manual_seed(0)
    if request.param == "conv_net":
        return _randomise_bn(conv_net().double()), torch.randn(9, 2, 5, 5, dtype=torch.float64)
    return _randomise_bn(small_resnet(1, 4, 4).double()), torch.randn(
        6, 1, 8, 8, dtype=torch.float64
    )


@pytest.mark.parametrize("route", ["auto", "materialised", "structured"])
def test_theta_equals_explicit_jjt(model_and_input, route):
    model, x = model_and_input
    f0, theta = explicit_theta(model, x)
    lin = linearize(model, x, route=route, block=4)
    torch.testing.assert_close(lin.f0, f0, rtol=0, atol=1e-12)
    assert lin.theta.shape == theta.shape
    assert ((lin.theta - theta).norm() / theta.norm()).item() <= 1e-10


def test_trace_mode_is_mean_of_diagonal_blocks(model_and_input):
    model, x = model_and_input
    _, theta = explicit_theta(model, x)
    n = x.shape[0]
    C = theta.shape[0] // n
    expected = torch.einsum("icjc->ij", theta.reshape(n, C, n, C)) / C
    for route in ("materialised", "structured"):
        lin = linearize(model, x, mode="trace", route=route, block=4)
        assert ((lin.theta - expected).norm() / expected.norm()).item() <= 1e-10
        assert lin.full_theta().shape == theta.shape


def test_output_projections_estimate_the_trace_without_bias(model_and_input):
    """P random output directions: P = C (one orthonormal group) gives Theta_s to float
    precision; fewer are unbiased (the mean over seeds converges) and err less as P grows."""
    model, x = model_and_input
    _, theta = explicit_theta(model, x)
    n = x.shape[0]
    C = theta.shape[0] // n
    expected = torch.einsum("icjc->ij", theta.reshape(n, C, n, C)) / C

    def err(t):
        return ((t - expected).norm() / expected.norm()).item()

    full = linearize(model, x, mode="trace", outputs=C, seed=5)
    assert full.mode == "trace" and err(full.theta) <= 1e-10
    ones = [linearize(model, x, mode="trace", outputs=1, seed=s).theta for s in range(48)]
    single = sum(map(err, ones)) / len(ones)
    assert single > 1e-3
    assert err(sum(ones) / len(ones)) < 0.35 * single
    assert err(linearize(model, x, mode="trace", outputs=C - 1, seed=0).theta) < single
    with pytest.raises(ValueError, match="needs every class"):
        linearize(model, x, mode="exact", outputs=1)


def test_output_projections_are_exact_for_a_model_linear_in_its_head():
    """A linear model's Jacobian has no cross-class blocks, so one direction gives Theta_s."""
    torch.manual_seed(0)
    model = nn.Linear(6, 4).double()
    x = torch.randn(10, 6, dtype=torch.float64)
    exact = linearize(model, x, mode="trace").theta
    for seed in range(3):
        one = linearize(model, x, mode="trace", outputs=1, seed=seed).theta
        torch.testing.assert_close(one, exact, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("mode,outputs", [("exact", None), ("trace", None), ("trace", 2)])
def test_theta_in_sample_blocks_equals_theta_at_once(model_and_input, mode, outputs):
    """Bounded memory: Theta block pair by block pair (uneven blocks, every route) is the same
    matrix, and a budget below the one-shot build's estimate picks blocks."""
    model, x = model_and_input
    whole = linearize(model, x, mode=mode, outputs=outputs, seed=1)
    for route in ROUTES:
        f0, theta = blocked_gram(model, x, 4, mode, route, block=3, outputs=outputs, seed=1)
        torch.testing.assert_close(f0, whole.f0, rtol=0, atol=1e-12)
        assert ((theta - whole.theta).norm() / whole.theta.norm()).item() <= 1e-12
    need = exact_memory_bytes(model, x, len(x)) / 2**30
    size = block_size(model, x, 0.8 * need)
    assert 1 <= size < len(x)
    limited = linearize(model, x, mode=mode, outputs=outputs, seed=1, memory_gb=0.8 * need)
    assert ((limited.theta - whole.theta).norm() / whole.theta.norm()).item() <= 1e-12
    assert (limited.block_samples, whole.block_samples) == (size, len(x))
    with pytest.raises(OverBudget, match="needs at least"):
        linearize(model, x, mode=mode, outputs=outputs, memory_gb=1e-9)


def test_the_dispatcher_times_its_two_parts_and_says_what_it_built(model_and_input):
    """One dispatcher for every mode: the stage hook is entered around "jacobian" then
    "theta"; a projected Theta that would cost more than the exact one is built exactly when
    a memory budget allows it (built="exact"), and sketched otherwise."""
    model, x = model_and_input
    entered = []

    @contextlib.contextmanager
    def stage(name):
        entered.append(name)
        yield

    sketch = Sketch("countsketch", 10**6, 0)  # far wider than Theta: the sketch is dearer
    lin = linearize(model, x, "projected", sketch=sketch, memory_gb=1.0, stage=stage)
    assert entered == ["jacobian", "theta"] and lin.built == "exact"
    torch.testing.assert_close(lin.theta, linearize(model, x).theta, rtol=0, atol=1e-12)
    small = Sketch("countsketch", 8, 0)
    for budget in (None, 1.0):
        sketched = linearize(model, x, "projected", sketch=small, memory_gb=budget)
        assert sketched.built == "projected" and sketched.theta.shape == lin.theta.shape


def test_inplace_activations_are_restored():
    model = _randomise_bn(conv_net().double())
    linearize(model, torch.randn(3, 2, 5, 5, dtype=torch.float64))
    assert model[2].inplace is True


def test_frozen_weights_are_left_out():
    torch.manual_seed(1)
    model = _randomise_bn(conv_net().double())
    for p in model[:5].parameters():
        p.requires_grad_(False)
    x = torch.randn(4, 2, 5, 5, dtype=torch.float64)
    _, theta = explicit_theta(model, x)
    assert torch.allclose(linearize(model, x).theta, theta, rtol=1e-10, atol=1e-12)


class _Scale(nn.Module):
    """A free parameter (like a ConvNeXt layer scale) acting on what its submodule returns."""

    def __init__(self, inner: nn.Module, width: int) -> None:
        super().__init__()
        self.inner, self.gamma = inner, nn.Parameter(torch.randn(width))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.gamma.view(1, -1, 1, 1) * self.inner(x)


class _Tokens(nn.Module):
    """Patches to tokens plus a position embedding and a class token (free parameters), then
    LayerNorm and Linear layers over the tokens (3-D inputs)."""

    def __init__(self) -> None:
        super().__init__()
        self.patch = nn.Conv2d(2, 6, 2, stride=2)
        self.pos = nn.Parameter(torch.randn(1, 10, 6))
        self.cls = nn.Parameter(torch.randn(1, 1, 6))
        self.norm, self.mlp = nn.LayerNorm(6), nn.Linear(6, 6)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        t = self.patch(x).flatten(2).transpose(1, 2)
        t = torch.cat([self.cls.expand(len(x), -1, -1), t], 1) + self.pos
        return self.mlp(torch.tanh(self.norm(t)))[:, 0]


def mixed_net() -> nn.Module:
    """Every layer type beyond Conv2d, Linear and BatchNorm: GroupNorm, a depthwise and a
    grouped convolution, a layer scale, tokens with position embedding and class token,
    LayerNorm over tokens, and a LoRA adapter."""
    from ttbench.models.lora import LoRALinear

    torch.manual_seed(0)
    conv = nn.Sequential(
        nn.Conv2d(2, 4, 3, padding=1),
        nn.GroupNorm(2, 4),
        nn.Tanh(),
        _Scale(nn.Conv2d(4, 4, 3, padding=1, groups=4), 4),
        nn.Conv2d(4, 2, 1, groups=2),
    )
    head = LoRALinear(nn.Linear(6, 3), rank=2, alpha=4.0)
    nn.init.normal_(head.lora_b.weight)  # not zero, so that both factors have gradients
    for m in conv.modules():
        if isinstance(m, nn.GroupNorm):
            nn.init.normal_(m.weight)
            nn.init.normal_(m.bias)
    return nn.Sequential(conv, _Tokens(), head).double().eval()


def test_every_layer_type_and_the_generic_route_are_exact():
    model = mixed_net()
    x = torch.randn(5, 2, 6, 6, dtype=torch.float64)
    f0, theta = explicit_theta(model, x)
    for mode in ("exact", "trace"):
        lin = linearize(model, x, mode=mode)
        want = theta if mode == "exact" else torch.einsum("icjc->ij", theta.view(5, 3, 5, 3)) / 3
        torch.testing.assert_close(lin.f0, f0, rtol=0, atol=1e-12)
        assert ((lin.theta - want).norm() / want.norm()).item() <= 1e-10
    assert routes(model) == {
        "0.0": "factored",
        "0.1": "generic",  # GroupNorm
        "0.3": "generic",  # the layer scale
        "0.3.inner": "generic",  # depthwise
        "0.4": "generic",  # grouped
        "1": "generic",  # position embedding and class token
        "1.patch": "factored",
        "1.norm": "generic",  # LayerNorm
        "1.mlp": "factored",  # over tokens
        "2.base": "factored",
        "2.lora_a": "factored",
        "2.lora_b": "factored",
    }


def test_modules_the_engine_cannot_take_are_refused():
    class Pair(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.w = nn.Parameter(torch.ones(3))

        def forward(self, x):
            return x * self.w, x

    model = nn.Sequential(Pair()).double()
    with pytest.raises(NotImplementedError, match="returns tuple, not a tensor"):
        linearize(model, torch.randn(2, 3, dtype=torch.float64))
    bn = nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4)).double().train()
    with pytest.raises(ValueError, match="eval mode"):
        linearize(bn, torch.randn(2, 3, dtype=torch.float64))


@pytest.mark.parametrize(
    "name,kwargs",
    [
        ("vit_tiny_patch16_224", {"img_size": 16, "patch_size": 8}),
        ("convnext_atto", {}),
    ],
)
def test_timm_vit_and_convnext_are_exact(name, kwargs):
    """timm's ViT (built at 16 px with 8 px patches) and ConvNeXt, random weights, float64."""
    import timm

    torch.manual_seed(0)
    model = timm.create_model(name, pretrained=False, num_classes=3, **kwargs).double().eval()
    x = torch.randn(3, 3, 16 if kwargs else 32, 16 if kwargs else 32, dtype=torch.float64)
    f0, theta = explicit_theta(model, x)
    lin = linearize(model, x)
    torch.testing.assert_close(lin.f0, f0, rtol=0, atol=1e-10)
    assert ((lin.theta - theta).norm() / theta.norm()).item() <= 1e-10


@pytest.mark.slow
def test_theta_of_a_torchvision_resnet18_equals_explicit_jjt():
    from torchvision.models import resnet18

    torch.manual_seed(0)
    model = _randomise_bn(resnet18(num_classes=2).double())  # in-place ReLUs, downsampling
    x = torch.randn(3, 3, 32, 32, dtype=torch.float64)
    f0, theta = explicit_theta(model, x)
    lin = linearize(model, x)
    torch.testing.assert_close(lin.f0, f0, rtol=0, atol=1e-12)
    assert ((lin.theta - theta).norm() / theta.norm()).item() <= 1e-10


@pytest.mark.parametrize(
    "conv",
    [
        {"padding": 1, "padding_mode": "reflect"},
        {"padding": 1, "padding_mode": "circular"},
        {"padding": 2, "padding_mode": "replicate"},
        {"padding": "same", "kernel_size": 4},  # even kernel: asymmetric padding
        {"padding": "valid"},
    ],
)
def test_every_padding_is_exact(conv):
    torch.manual_seed(0)
    conv = {"kernel_size": 3, **conv}
    model = nn.Sequential(
        nn.Conv2d(2, 3, **conv), nn.Tanh(), nn.Flatten(), nn.LazyLinear(2)
    ).double()
    x = torch.randn(5, 2, 6, 6, dtype=torch.float64)
    model(x)  # materialise the lazy layer
    _, theta = explicit_theta(model.eval(), x)
    lin = linearize(model, x)
    assert ((lin.theta - theta).norm() / theta.norm()).item() <= 1e-10


def test_batchnorm_without_running_statistics_is_refused():
    model = nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4, track_running_stats=False)).double()
    with pytest.raises(NotImplementedError, match="samples interact"):
        linearize(model.eval(), torch.randn(4, 3, dtype=torch.float64))
    model = nn.Sequential(
        nn.Linear(3, 4), nn.BatchNorm1d(4, affine=False, track_running_stats=False)
    )
    with pytest.raises(NotImplementedError, match="samples interact"):
        linearize(model.double().eval(), torch.randn(4, 3, dtype=torch.float64))
