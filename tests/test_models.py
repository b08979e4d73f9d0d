import logging
import threading
import time

import pytest
import torch

from ttbench.models.classifier import finetune_model
from ttbench.models.pretrain import (
    CheckpointError,
    PretrainSpec,
    load_checkpoint,
    load_or_pretrain,
    save_checkpoint,
)
from ttbench.models.small_resnet import small_resnet

SPEC = PretrainSpec("digits", 1, 4, 10, 1, 1e-3, 64, 0)


def _source():
    g = torch.Generator().manual_seed(0)
    return torch.randn(40, 1, 8, 8, generator=g), torch.arange(40) % 10


def test_default_width_has_about_690k_weights():
    assert sum(p.numel() for p in small_resnet(1, 48, 10).parameters()) == 690_970


def test_pretraining_is_seeded_and_cached(tmp_path, caplog):
    caplog.set_level(logging.INFO)
    a = load_or_pretrain(SPEC, tmp_path, _source)
    assert "pretraining" in caplog.text
    caplog.clear()
    b = load_or_pretrain(SPEC, tmp_path, _source)
    assert "pretraining" not in caplog.text
    for (k, v), w in zip(a.state_dict().items(), b.state_dict().values(), strict=True):
        assert torch.equal(v, w), k
    c = load_or_pretrain(SPEC, tmp_path / "other", _source)
    assert all(
        torch.equal(v, w)
        for v, w in zip(a.state_dict().values(), c.state_dict().values(), strict=True)
    )


def test_two_workers_needing_one_checkpoint_pretrain_it_once(tmp_path):
    """The second waits for the first's pretraining, then loads its checkpoint (threads here:
    flock locks one open file, so two threads exclude each other as two processes do)."""
    calls, started = [], threading.Event()

    def slow_source():
        calls.append(1)
        started.set()
        time.sleep(0.5)  # the second worker arrives while this one pretrains
        return _source()

    first = threading.Thread(target=load_or_pretrain, args=(SPEC, tmp_path, slow_source))
    first.start()
    started.wait(10)
    second = load_or_pretrain(SPEC, tmp_path, slow_source)
    first.join()
    assert len(calls) == 1 and len(list(tmp_path.glob("*.pt"))) == 1
    assert (
        second.state_dict().keys() == load_or_pretrain(SPEC, tmp_path, _source).state_dict().keys()
    )


def test_corrupt_checkpoint_is_rebuilt(tmp_path, caplog):
    path = tmp_path / SPEC.filename()
    path.write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError, match="cannot be read"):
        load_checkpoint(path, SPEC)
    load_or_pretrain(SPEC, tmp_path, _source)
    assert "cannot be read" in caplog.text and "pretraining it again" in caplog.text
    load_checkpoint(path, SPEC)  # now valid


def test_stale_or_mismatching_checkpoint_is_refused(tmp_path):
    path = tmp_path / SPEC.filename()
    model = SPEC.build()
    save_checkpoint(path, SPEC, model)
    other = PretrainSpec("digits", 1, 4, 10, 2, 1e-3, 64, 0)
    with pytest.raises(CheckpointError, match="built for"):
        load_checkpoint(path, other)
    blob = torch.load(path, weights_only=True)
    blob["format_version"] = 0
    torch.save(blob, path)
    with pytest.raises(CheckpointError, match="format version"):
        load_checkpoint(path, SPEC)
    blob["format_version"] = 1
    blob["state_dict"]["head.weight"] = torch.zeros(3, 3)
    torch.save(blob, path)
    with pytest.raises(CheckpointError, match="does not match"):
        load_checkpoint(path, SPEC)


def test_finetune_model_fresh_head_and_untouched_body():
    pre = SPEC.build().eval()
    m = finetune_model(pre, 3, 0.01, seed=5)
    assert m.head.out_features == 3 and not m.training
    assert torch.all(m.head.bias == 0)
    assert abs(float(m.head.weight.detach().std()) - 0.01) < 0.005
    assert torch.equal(finetune_model(pre, 3, 0.01, seed=5).head.weight, m.head.weight)
    with torch.no_grad():
        next(m.body.parameters()).add_(1)
    assert not torch.equal(next(m.body.parameters()), next(pre.body.parameters()))


def test_conv_rescale_preserves_the_function_and_shrinks_the_conv_kernel():
    from torch import nn

    from ttbench.core.linearize import linearize
    from ttbench.models.pretrain import rescale_convs

    torch.manual_seed(0)
    model = small_resnet(1, 4, 3).double()
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.normal_()
            m.running_var.uniform_(0.5, 2)
    model.eval()
    x = torch.randn(5, 1, 8, 8, dtype=torch.float64)
    convs_only = [p for m in model.modules() if isinstance(m, nn.Conv2d) for p in m.parameters()]
    for p in model.parameters():
        p.requires_grad_(any(p is q for q in convs_only))
    before, theta_before = model(x), linearize(model, x).theta
    rescale_convs(model, 3.0)
    torch.testing.assert_close(model(x), before, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(linearize(model, x).theta, theta_before / 9, rtol=1e-9, atol=1e-12)


def test_a_torchvision_resnet_pretrained_by_ttbench_on_upsampled_digits(tmp_path):
    from dataclasses import asdict

    from ttbench.data.digits import Digits

    data = Digits(resolution=16, channels=3)
    x, y = data.source()
    assert x.shape[1:] == (3, 16, 16) and data.images(data.labels()[:0]).shape[1:] == (3, 16, 16)
    assert torch.equal(x[:, 0], x[:, 2])  # the grey channel repeated
    spec = PretrainSpec("digits", 3, 0, 10, 1, 1e-3, 64, 0, arch="resnet18", resolution=16)
    model = load_or_pretrain(spec, tmp_path, lambda: (x[:64], y[:64]))
    assert model.head.out_features == 10 and model(x[:2]).shape == (2, 10)
    assert spec.filename().startswith("resnet18_digits_")
    assert load_checkpoint(tmp_path / spec.filename(), spec).head.in_features == 512
    # the default model's checkpoint keeps the name it had before these settings existed
    old = {k: v for k, v in asdict(SPEC).items() if k in ("dataset", "in_channels", "width",
           "num_classes", "epochs", "lr", "batch_size", "seed", "conv_scale")}  # fmt: skip
    assert SPEC.identity() == old
