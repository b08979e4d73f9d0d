import pytest
import torch

from tests.conftest import TINY, run_in_process
from ttbench.core import stability as st
from ttbench.core.dynamics import sharpness


@pytest.mark.parametrize("loss", ["ce", "mse"])
def test_top_eigen_is_the_sharpness_of_theta(problem, loss):
    """Two routes to lambda_max: power iteration on the Gauss-Newton matrix with jvp/vjp in
    weight space, and on Theta grad_f^2 L in function space."""
    model, x, _, lin = problem
    lam, _ = st.top_eigen(model, x, loss, iterations=300)
    assert lam == pytest.approx(sharpness(lin.theta, lin.f0, loss), rel=1e-4)


def test_the_watch_warm_starts_each_step_from_the_last(problem):
    """On weights that do not move, each watched step adds one power iteration to the last:
    the watched values rise to lambda_max."""
    model, x, _, _ = problem
    watch = st.Watch(0.1, 0.5, "ce", x, frozenset(range(0, 80, 2)))
    values = [watch(t, model) for t in range(80)]
    assert values[1] is None and 1 not in watch.values and watch(0, model) is None
    lam, _ = st.top_eigen(model, x, "ce", iterations=500)
    edge = st.stability(0.1, 0.5, lam)
    assert values[0] < 0.95 * edge  # 6 iterations from a random start: not there yet
    assert watch.values[78] == pytest.approx(edge, rel=1e-3)


def test_schedule_is_dense_early_then_geometric():
    assert st.schedule(150) == (0, 1, 2, 3, 4, 6, 8, 11, 16, 23, 32, 45, 64, 91, 128)
    assert st.schedule(5) == (0, 1, 2, 3, 4)
    assert st.schedule(2) == (0, 1)


def test_forecast_rules():
    calm = {0: 0.3, 1: 0.5, 2: 0.9}
    assert st.forecast(calm, 0.0) == st.Forecast(st.CONVERGES)
    late = {0: 0.3, 2: 0.9, 4: 1.4, 8: 3.0}
    assert st.forecast(late, 0.9) == st.Forecast(st.SPIKE_AHEAD, 4, 1.4)
    assert st.forecast(late, 0.9, before=4).verdict == st.CONVERGES
    early = {0: 0.4, 1: 1.4, 2: 2.6}
    # strongly unstable by step 2: with momentum an explosion, without it a spike
    assert st.forecast(early, 0.9) == st.Forecast(st.DIVERGES, 1, 1.4)
    assert st.forecast(early, 0.0) == st.Forecast(st.SPIKE_AHEAD, 1, 1.4)
    assert st.forecast({0: 0.5, 3: float("nan")}, 0.0).verdict == st.SPIKE_AHEAD
    assert st.forecast(late, 0.0, threshold=5.0).verdict == st.CONVERGES
    # the default threshold 1.1: an estimate just past the edge is within the watch's error
    assert st.forecast({0: 0.3, 4: 1.09}, 0.0).verdict == st.CONVERGES
    assert st.forecast({0: 0.3, 4: 1.09}, 0.0, threshold=1.0).verdict == st.SPIKE_AHEAD


def test_a_run_watches_the_stability_apart_from_the_fine_tuning(tmp_path, cache_dir, capsys):
    job = [*TINY, "steps=12", "lr=3", "predictor=discrete"]
    rec = run_in_process(job, tmp_path / "r", cache_dir)
    w, stopped = rec.watch, rec.real.stopped_at
    assert stopped is not None  # it exploded: nothing is watched after the stop
    assert sorted(w.stability) == [t for t in (0, 1, 2, 3, 4, 6, 8, 11) if t <= stopped]
    assert rec.stages["watch"]["wall_s"] > 0
    assert w.verdict in (st.SPIKE_AHEAD, st.DIVERGES) and w.stability[w.at] >= 1.1
    said = st.forecast(w.stability, 0.0)
    assert (w.verdict, w.at) == (said.verdict, said.at)
    out = capsys.readouterr().out
    assert f"{w.verdict.upper()}, announced at step {w.at}" in out
    quiet = run_in_process(
        [*TINY, "steps=12", "predictor=discrete", "watch.steps=[]"], tmp_path / "q", cache_dir
    )
    assert quiet.watch is None and "watch" not in quiet.stages


def test_watch_settings_are_checked(tmp_path):
    from tests.conftest import spec_of
    from ttbench.validate import ConfigError

    assert spec_of(["steps=20", "watch.steps=[5,0,5]"]).watch.steps == (0, 5)
    for bad in ("watch.steps=[20]", "watch.steps=[-1]", "watch.steps=every"):
        with pytest.raises(ConfigError, match=r"watch\.steps"):
            spec_of(["steps=20", bad])
    with pytest.raises(ConfigError, match=r"watch\.threshold"):
        spec_of(["watch.threshold=nan"])
    with pytest.raises(ConfigError, match=r"watch\.samples"):
        spec_of(["watch.samples=0"])


def test_the_watch_runs_through_fused_attention():
    """timm's ViT uses the fused CPU attention kernel, which has no forward derivative; the
    watch's jvp runs it through the math kernels and still equals Theta's sharpness."""
    import timm

    from ttbench.core.linearize import linearize

    torch.manual_seed(0)
    model = timm.create_model(
        "vit_tiny_patch16_224", pretrained=False, num_classes=3, img_size=16, patch_size=8
    ).eval()
    x = torch.randn(4, 3, 16, 16)
    lam, _ = st.top_eigen(model, x, "ce", iterations=200, tol=1e-7)
    lin = linearize(model, x)
    assert lam == pytest.approx(sharpness(lin.theta, lin.f0, "ce"), rel=1e-3)
