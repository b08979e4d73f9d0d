"""The probes of Figs. 3, 4 and 9: real numbers against independent routes, and the CLI."""

import copy

import numpy as np
import pandas as pd
import pytest
import torch
from sklearn.decomposition import PCA
from torch import nn
from torch.func import functional_call, grad, vmap

from tests.conftest import TINY, compose_cfg, run_in_process, spec_of
from ttbench.core import losses
from ttbench.core.linearize import linearize
from ttbench.models.classifier import Classifier
from ttbench.probes import PROBES, clustering_frame, projection_frame, spectrum_frame
from ttbench.probes.clustering import _signed, head_inputs
from ttbench.probes.spectrum import fit_spectrum
from ttbench.probes.subsets import nested_subsets
from ttbench.probes.weights import linear_trajectory, weight_function_frame
from ttbench.validate import ConfigError, validate


def test_nested_subsets_are_prefixes_clipped_and_include_everything():
    subsets = nested_subsets(30, [20, 5, 50, 5], seed=3)
    assert [len(s) for s in subsets] == [5, 20, 30]
    assert torch.equal(subsets[1][:5], subsets[0]) and torch.equal(subsets[2][:20], subsets[1])
    assert sorted(subsets[2].tolist()) == list(range(30))


def test_spectrum_is_theta_over_n_on_each_subset(problem):
    model, x, y, lin = problem
    frame = spectrum_frame(model, x, y, sizes=[4, 8], seed=0)
    assert sorted(frame.n.unique()) == [4, 8, 12]
    full = frame[frame.n == 12]
    eig = torch.linalg.eigvalsh(lin.theta).flip(0).clamp_min(0).numpy() / 12
    np.testing.assert_allclose(full.eigenvalue, eig, rtol=1e-9, atol=1e-12)
    assert list(full.k) == list(range(1, 37))
    r0 = lin.f0 - nn.functional.one_hot(y, 3).double()
    assert full.projection.sum() == pytest.approx((r0**2).sum().item())  # Parseval
    idx = nested_subsets(12, [4], seed=0)[0]
    sub = torch.linalg.eigvalsh(linearize(model, x[idx]).theta).flip(0).clamp_min(0) / 4
    np.testing.assert_allclose(frame[frame.n == 4].eigenvalue, sub.numpy(), rtol=1e-9, atol=1e-12)
    law = fit_spectrum(eig)
    assert full.c.iloc[0] == pytest.approx(law.c, rel=1e-9) and law.s > 0
    assert full.s.iloc[0] == pytest.approx(law.s, rel=1e-9)


def test_projection_error_falls_with_the_sketch_dimension(problem):
    model, x, _, _ = problem
    frame = projection_frame(
        model, x, sizes=[6], dims=[16, 256, 4096], kind="countsketch", seed=0, chunk=5
    )
    assert list(frame.n) == [6] * 4 + [12] * 4
    full = frame[frame.n == 12].set_index("method", drop=False)
    n_weights = sum(p.numel() for p in model.parameters())
    exact = frame[frame.method == "exact"]
    assert (exact.rel_error == 0).all() and (exact.dim == n_weights).all()
    sketched = full[full.method == "countsketch"]
    assert list(sketched.dim) == [16, 256, 4096]
    errors = sketched.rel_error.to_numpy()
    assert errors[0] > errors[1] > errors[2] and errors[2] < 0.05
    assert sketched.top_eig_ratio.iloc[-1] == pytest.approx(1, abs=0.05)
    assert list(sketched.stored_bytes) == [12 * 3 * d * 8 for d in (16, 256, 4096)]
    assert (frame.build_s > 0).all()


def _per_sample_gradients(model, x, y, loss):
    params = {k: p.detach() for k, p in model.named_parameters()}
    buffers = dict(model.named_buffers())

    def sample_loss(p, xi, ti):  # written out, independent of core.losses
        f = functional_call(model, (p, buffers), (xi[None],))[0]
        if loss == "ce":
            return -(ti * torch.log_softmax(f, -1)).sum()
        return 0.5 * ((f - ti) ** 2).sum()

    targets = nn.functional.one_hot(y, 3).double()
    g = vmap(grad(sample_loss), in_dims=(None, 0, 0))(params, x, targets)
    return torch.cat([v.flatten(1) for v in g.values()], dim=1)  # (N, D)


@pytest.mark.parametrize("loss", ["ce", "mse"])
def test_clustering_components_match_per_sample_gradients_from_torch_func(problem, loss):
    model, x, y, _ = problem
    kw = {"lr": 0.05, "momentum": 0.5, "steps": 30, "loss": loss}
    every = clustering_frame(model, x, y, components=12, **kw)
    scores = torch.tensor(every[[f"grad_pc{k}" for k in range(1, 13)]].to_numpy())
    g = _per_sample_gradients(model, x, y, loss).to(torch.float64)
    torch.testing.assert_close(scores @ scores.T, g @ g.T, rtol=1e-8, atol=1e-10)

    frame = clustering_frame(model, x, y, components=3, **kw)
    u, s, _ = torch.linalg.svd(g, full_matrices=False)  # uncentred PCA of the gradients
    reference = _signed(u[:, :3] * s[:3]).numpy()
    np.testing.assert_allclose(frame[["grad_pc1", "grad_pc2", "grad_pc3"]], reference, atol=1e-8)
    features = head_inputs(model, x).numpy()
    sk = _signed(torch.tensor(PCA(3).fit_transform(features))).numpy()
    np.testing.assert_allclose(frame[["feat_pc1", "feat_pc2", "feat_pc3"]], sk, atol=1e-8)

    assert list(frame["sample"]) == list(range(12)) and list(frame.label) == y.tolist()
    steps = [int(c.removeprefix("loss_t")) for c in frame if c.startswith("loss_t")]
    assert steps[0] == 0 and steps[-1] == 30 and 15 <= len(steps) <= 20
    with torch.no_grad():
        start = losses.per_sample_loss(model(x), y, loss).numpy()
    np.testing.assert_allclose(frame.loss_t0, start, rtol=1e-10)
    assert frame.t_eps.between(0, 30).all()


def test_linear_weight_trajectory_reproduces_the_discrete_map(problem):
    """f_t^lin = f0 + Theta a_t: the weight-space coefficients and the function-space map agree,
    under GD and SGD with momentum."""
    _, _, y, lin = problem
    batches = torch.randint(12, (15, 4), generator=torch.Generator().manual_seed(0))
    for b in (None, batches):
        f, a = linear_trajectory(
            lin.theta, lin.f0, y, lr=0.05, momentum=0.9, steps=15, loss="ce", batches=b
        )
        implied = lin.f0 + (a.reshape(16, -1) @ lin.theta).reshape(16, 12, 3)
        torch.testing.assert_close(f, implied, rtol=1e-10, atol=1e-10)
        assert (a[-1] != 0).any()


@pytest.mark.parametrize(
    "optim", [[], ["optim=sgd", "optim.batch_size=4", "optim.eval_every=2", "optim.smooth=1"]]
)
@pytest.mark.parametrize("loss", ["ce", "mse"])
def test_weight_function_is_exact_for_a_model_linear_in_its_weights(optim, loss):
    torch.manual_seed(0)
    x = torch.randn(20, 6, dtype=torch.float64)
    y = torch.arange(20) % 3
    model = Classifier(nn.Identity(), nn.Linear(6, 3)).double().eval()
    spec = spec_of(["lr=0.2", "momentum=0.5", "steps=20", f"loss={loss}", *optim])
    frame = weight_function_frame(model, x, y, spec)
    every = 2 if optim else 1
    assert list(frame.step) == list(range(0, 21, every))
    first, rest = frame.iloc[0], frame.iloc[1:]
    assert np.isnan(first.weight_rel_error) and np.isnan(first.output_rel_error)
    assert rest.weight_rel_error.max() < 1e-10 and rest.output_rel_error.max() < 1e-10
    assert rest.weight_distance.min() > 0.01 and frame.loss.iloc[-1] < 0.8 * frame.loss.iloc[0]
    np.testing.assert_allclose(frame.loss, frame.loss_lin, rtol=1e-10)


def test_weight_function_of_a_network_drifts_from_its_linearisation(problem):
    model, x, y, _ = problem
    spec = spec_of(["lr=0.1", "steps=8"])
    frame = weight_function_frame(copy.deepcopy(model), x, y, spec)
    assert frame.weight_rel_error.iloc[1] < 1e-10  # the first step is J^T of the same gradient
    assert frame.weight_rel_error.iloc[-1] > 1e-3 and frame.output_rel_error.iloc[1] > 1e-3


@pytest.mark.parametrize(
    ("overrides", "key"),
    [
        (["probes=[spectrum]", "probe.sizes=[]"], "probe.sizes"),
        (["probes=[projection]", "probe.sizes=[10,0]"], "probe.sizes"),
        (["probes=[projection]", "probe.dims=[16,2.5]"], "probe.dims"),
        (["probes=[clustering]", "probe.components=0"], "probe.components"),
        (["probes=[weight_function]", "predictor=none", "weight_decay=0.1"], "weight_decay"),
    ],
)
def test_probe_settings_are_validated(overrides, key):
    with pytest.raises(ConfigError, match=key):
        validate(compose_cfg(overrides))
    for unused in ("probe.dims=[0]", "probe.components=0"):  # refused even where no probe runs
        with pytest.raises(ConfigError, match=unused.split("=")[0]):
            validate(compose_cfg([unused]))


def test_probes_run_from_the_command_line(tmp_path, cache_dir):
    out = tmp_path / "run"
    names = ["spectrum", "projection", "clustering", "weight_function"]
    probes = [f"probes=[{','.join(names)}]", "probe.sizes=[10,30]", "probe.dims=[16,64]"]
    rec = run_in_process([*TINY, *probes], out, cache_dir)
    assert rec.probes == {n: f"probe_{n}.parquet" for n in names}
    assert {f"probe_{n}" for n in names} <= set(rec.stages)
    tables = {n: pd.read_parquet(out / f"probe_{n}.parquet") for n in names}
    assert sorted(tables["spectrum"].n.unique()) == [10, 30]
    assert len(tables["spectrum"]) == 10 * 5 + 30 * 5
    assert len(tables["projection"]) == 2 * 3
    assert len(tables["clustering"]) == 30 and "grad_pc5" in tables["clustering"]
    assert list(tables["weight_function"].step) == list(range(5))
    assert set(PROBES) == set(names)
