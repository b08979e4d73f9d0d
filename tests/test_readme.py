"""What a newcomer does with the README: its Python API example after every entry point is
imported (no public name shadowed, nothing registered on import), and `pip install .` then
`python -m ttbench.run` from any directory."""

import importlib
import os
import shutil
import subprocess
import sys

import pytest

from tests.conftest import REPO, TINY, run_dir

ENTRY_POINTS = [
    "ttbench.run",
    "ttbench.pretrain",
    "ttbench.collect",
    "ttbench.sweep",
    "ttbench.figures",
    "ttbench.figures.__main__",
    "ttbench.bench.engine",
    "ttbench.bench.modes",
    "ttbench.bench.sgd",
    "ttbench.bench.theta",
    "ttbench.bench.paper_scale",
    "ttbench.plan",
    "ttbench.judge",
    "ttbench.notebooks",
]

CHECK = """
import importlib, sys
for module in sys.argv[1:]:
    importlib.import_module(module)
from omegaconf import OmegaConf
assert not OmegaConf.has_resolver("ttbench.run_dir"), "a resolver was registered on import"
assert "matplotlib.pyplot" not in sys.modules, "pyplot (global figure state) was imported"
import torch
from ttbench.models.small_resnet import small_resnet
torch.manual_seed(0)
model, x, y = small_resnet(1, 4, 3), torch.randn(12, 1, 8, 8), torch.arange(12) % 3
namespace = {"model": model, "x": x, "y": y}
exec(EXAMPLE, namespace)
t = namespace["ttbench"].t_eps(namespace["pred"].curves.loss, 0.1)
assert isinstance(t, int) and 0 < t <= 150, t
print("example ok", t)
"""


def readme_api_example() -> str:
    text = (REPO / "README.md").read_text()
    return text.split("## Python API", 1)[1].split("```python", 1)[1].split("```", 1)[0]


def test_readme_api_example_after_importing_every_entry_point():
    assert "ttbench.predict(" in readme_api_example()
    script = f"EXAMPLE = {readme_api_example()!r}\n{CHECK}"
    proc = subprocess.run(
        [sys.executable, "-c", script, *ENTRY_POINTS], capture_output=True, text=True, timeout=300
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "example ok" in proc.stdout


@pytest.mark.slow
def test_a_plain_install_runs_from_any_directory(tmp_path, cache_dir):
    """`pip install .` (not editable) carries the configs and the sweeper plugin: a run and
    sweeps (one with a bad job) from a directory that is not the checkout."""
    src, site = tmp_path / "src", tmp_path / "site"  # a copy: building writes build/ beside it
    skip = shutil.ignore_patterns(
        ".git", "build", "outputs", "*.egg-info", "__pycache__", ".*_cache"
    )
    shutil.copytree(REPO, src, symlinks=True, ignore=skip)
    pip = [sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--no-build-isolation"]
    proc = subprocess.run([*pip, "--target", str(site), str(src)], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-3000:]
    work = tmp_path / "elsewhere"
    work.mkdir()
    env = {**os.environ, "PYTHONPATH": str(site), "TTBENCH_CACHE": str(cache_dir)}

    def ttbench(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run(
            [sys.executable, "-m", *args], cwd=work, env=env, capture_output=True, text=True
        )

    found = subprocess.run(
        [sys.executable, "-c", "import ttbench; print(ttbench.__file__)"],
        cwd=work, env=env, capture_output=True, text=True,
    ).stdout  # fmt: skip
    assert found.startswith(str(site)), found
    run = ttbench("ttbench.run", *TINY)
    assert run.returncode == 0, run.stderr[-3000:]
    assert (run_dir(work / "outputs" / "runs", TINY) / "done").is_file()

    # ttbench's sweeper: every job checked before the first starts, then named and reported
    one = ttbench("ttbench.run", *TINY, "lr=-1")  # checked before Hydra makes a directory
    assert one.returncode == 2 and one.stderr.strip().splitlines() == [
        "ttbench: error: lr=-1 is invalid: must be > 0"
    ]
    assert not list((work / "outputs" / "runs").glob("*lr=-1*"))
    bad = ttbench("ttbench.run", "-m", *TINY, "lr=0.003,0")
    assert bad.returncode == 2 and "Traceback" not in bad.stderr
    assert bad.stderr.strip().splitlines() == [
        f"ttbench: error: job #1 ({' '.join([*TINY, 'lr=0'])}): lr=0 is invalid: must be > 0"
    ]
    assert len(list((work / "outputs" / "runs").iterdir())) == 1  # none started
    sweep = ttbench("ttbench.run", "-m", *TINY, "seed=1,2")
    assert sweep.returncode == 0, sweep.stderr[-3000:]
    runs = work / "outputs" / "runs"
    assert "sweep of 2 jobs in outputs/runs: 0 done (skipped), 0 incomplete" in sweep.stdout
    for seed in (1, 2):
        assert (run_dir(runs, [*TINY, f"seed={seed}"]) / "done").is_file()
    again = ttbench("ttbench.run", "-m", *TINY, "seed=2,3")
    assert again.returncode == 0, again.stderr[-3000:]
    assert "sweep of 2 jobs" in again.stdout and "1 done (skipped)" in again.stdout
    assert "1 not started" in again.stdout


def test_the_package_namespace_loads_each_public_name_from_its_home():
    """`import ttbench` loads no torch (names come on first use) and names what __all__ says."""
    import ttbench

    assert sorted(ttbench.__all__) == sorted(ttbench._HOMES)
    for name in ttbench.__all__:
        home = importlib.import_module(ttbench._HOMES[name])
        assert getattr(ttbench, name) is getattr(home, name)
    proc = subprocess.run(
        [sys.executable, "-c", "import sys, ttbench; print('torch' in sys.modules)"],
        capture_output=True, text=True,
    )  # fmt: skip
    assert proc.stdout.strip() == "False", proc.stderr


@pytest.mark.parametrize("app", ["ttbench.run", "ttbench.plan", "ttbench.pretrain"])
def test_a_bad_number_is_answered_before_torch_is_imported(app):
    """The Hydra apps check their command line at the top of their module: a mistyped value
    gets its one line without loading torch (about 0.5 s instead of 3 s on 2 cores)."""
    script = (
        "import runpy, sys\n"
        f"sys.argv = ['{app}', 'lr=-1']\n"
        "try:\n"
        f"    runpy.run_module('{app}', run_name='__main__')\n"
        "except SystemExit as e:\n"
        "    print('exit', e.code, 'torch' in sys.modules)\n"
    )
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True)
    assert proc.stdout.strip() == "exit 2 False", proc.stdout + proc.stderr
    assert proc.stderr.strip() == "ttbench: error: lr=-1 is invalid: must be > 0"


def _own_model_snippets() -> list[str]:
    text = (REPO / "README.md").read_text()
    section = text.split("## Your own model", 1)[1].split("\n## ", 1)[0]
    return [b.split("```", 1)[0] for b in section.split("```python\n")[1:]]


def test_the_readme_own_model_snippets_run_on_a_model_and_loader(tmp_path, monkeypatch):
    """The first screen's two snippets, as written: predict_job on a model, a DataLoader and
    an SGD optimiser, then the Tracker inside a plain loop."""
    import torch
    from torch.utils.data import DataLoader, TensorDataset

    from ttbench.models.small_resnet import small_resnet

    predict, track = _own_model_snippets()
    torch.manual_seed(0)
    model = small_resnet(1, 4, 3).eval()
    x, y = torch.randn(30, 1, 8, 8), torch.arange(30) % 3
    loader = DataLoader(TensorDataset(x, y), batch_size=30)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01)
    namespace = {"model": model, "loader": loader, "optimizer": optimizer}
    monkeypatch.chdir(tmp_path)
    exec(predict, namespace)
    assert namespace["pred"].optimizer == "gd" and (tmp_path / "prediction.png").is_file()
    batches = [(x, y)] * 3
    namespace |= {"batches": batches, "loss_fn": torch.nn.functional.cross_entropy}
    exec(track, namespace)
    assert namespace["tracker"].steps_done == 3 and namespace["eta"].step == 3
