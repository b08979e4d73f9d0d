"""The benchmarks run once at a tiny size, so they cannot rot."""

import pandas as pd
import pytest

from ttbench.bench import engine, modes, paper_scale, theta
from ttbench.bench import sgd as sgd_bench


def test_theta_benchmark_runs_and_reports(cache_dir, capsys):
    theta.main(
        [
            "task.n=3",
            "steps=3",
            "model.width=4",
            "model.pretrain.epochs=1",
            "loss=mse",
            f"cache_dir={cache_dir}",
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


def test_engine_benchmark_runs(capsys):
    engine.main(["--only", "mlp,cnn", "--n", "3"])
    out = capsys.readouterr().out
    lines = [line for line in out.splitlines() if line.startswith(("mlp", "cnn"))]
    assert len(lines) == 2
    assert all(float(line.split()[-1]) < 1e-5 for line in lines)  # engine == torch.func


def test_modes_benchmark_runs(cache_dir, tmp_path, capsys):
    modes.main(
        [
            "task.n=8",
            "steps=4",
            "model.width=4",
            "model.pretrain.epochs=1",
            "subset.n0=20",
            "subset.k0=10",
            f"cache_dir={cache_dir}",
            "--dims",
            "16",
            "--sketches",
            "countsketch",
            "--sizes",
            "10,20",
            "--csv",
            str(tmp_path / "out"),
        ]
    )
    out = capsys.readouterr().out
    assert "projected/countsketch" in out and "subset" in out and "power law" in out
    assert (tmp_path / "out" / "spectra.csv").stat().st_size > 0


@pytest.mark.slow  # a torchvision ResNet-18 fine-tuned and linearised eight ways: 13 s
def test_paper_scale_benchmark_runs(tmp_path, capsys):
    tiny = ["--size", "16", "--per-class", "3", "--steps", "5", "--batch", "5", "--loss", "mse"]
    paper_scale.main([*tiny, "--csv", str(tmp_path)])
    table = pd.read_csv(tmp_path / "paper_scale.csv")
    gd, sgd = table[table.part == "gd"], table[table.part == "sgd"]
    assert list(gd.stage) == ["fine-tune", *paper_scale.GD_MODES, "subset"]
    assert list(sgd.stage) == ["fine-tune, loss every 5", "fine-tune", *paper_scale.SGD_MODES]
    exact = gd[gd.stage == "exact"].iloc[0]
    assert exact.max_steps_from_exact == 0 and exact.ratio > 0 and exact.gmac > 0
    assert "jacobian" in exact.stages and "theta" in exact.stages
    assert "float32 GEMM" in capsys.readouterr().out
