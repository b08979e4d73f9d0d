"""The benchmarks run once at a tiny size, so they cannot rot."""

from ttbench.bench import sgd as sgd_bench
from ttbench.bench import theta


def test_theta_benchmark_runs_and_reports(tmp_path, capsys):
    theta.main(
        [
            "task.n=3",
            "steps=3",
            "model.width=4",
            "model.pretrain.epochs=1",
            "loss=mse",
            f"cache_dir={tmp_path}",
        ]
    )
    out = capsys.readouterr().out
    assert "theta [torch.func vmap(jacrev) + J J^T]" in out
    assert "closed_form" in out and "fine-tune / predict" in out
    diff = float(out.rsplit("relative Frobenius difference", 1)[1])
    assert diff < 1e-5  # the engine and the baseline build the same Theta


def test_sgd_benchmark_runs(capsys):
    sgd_bench.main(["--n", "6", "--c", "2", "--steps", "3", "--paths", "2", "--batch", "2"])
    out = capsys.readouterr().out
    assert "exact_sgd" in out and "sde, noise=diagonal" in out
