"""Every command and Python snippet of the README and docs/ still works as written: the
commands' overrides compose and validate (a sweep by its first value of each list), the other
commands' flags parse, each Python block compiles and the cheap ones run."""

from __future__ import annotations

import argparse
import importlib
import re
import shlex

import pytest

from tests.conftest import REPO
from ttbench.config import compose
from ttbench.validate import validate

PAGES = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md")), REPO / "experiments/README.md"]
HYDRA_APPS = ("ttbench.run", "ttbench.plan")
PLACEHOLDERS = {"<date_time>": "2026-01-01_00-00-00"}  # the docs' stand-in for a plan's folder
# files and callables a page asks the user to provide
PROVIDED = ("model.weights", "dataset.root", "plan.table", "model._target_", "dataset._target_")


def blocks(language: str) -> list[tuple[str, str]]:
    found = []
    for page in PAGES:
        for block in re.findall(rf"```{language}\n(.*?)```", page.read_text(), re.S):
            found.append((page.relative_to(REPO).as_posix(), block))
    return found


def commands() -> list[tuple[str, list[str]]]:
    out = []
    for page, block in blocks("(?:bash|sh)"):
        for line in block.replace("\\\n", " ").splitlines():
            line = line.split("  #")[0].strip()
            for key, value in PLACEHOLDERS.items():
                line = line.replace(key, value)
            if line.startswith("python -m ttbench"):
                out.append((page, shlex.split(line.replace("[", "").replace("]", ""))[2:]))
    return out


COMMANDS = commands()


def test_the_pages_hold_commands_and_snippets():
    apps = {argv[0] for _, argv in COMMANDS}
    assert {"ttbench.run", "ttbench.plan", "ttbench.collect", "ttbench.figures"} <= apps
    assert len(blocks("python")) >= 3


def _job(argv: list[str]) -> list[str]:
    """A Hydra command line as the overrides of its first job: Hydra's own settings and
    launcher/cluster groups dropped, each swept list at its first value."""
    job = []
    for arg in argv:
        if arg in ("-m", "--multirun") or arg.startswith(("hydra", "cluster=")):
            continue
        key, _, value = arg.partition("=")
        if "," in value and not value.startswith("["):
            value = value.split(",")[0]
        job.append(f"{key}={value}")
    return job


@pytest.mark.parametrize(
    "page,argv", [c for c in COMMANDS if c[1][0] in HYDRA_APPS], ids=lambda c: str(c)[:60]
)
def test_each_hydra_command_composes_and_validates(page, argv):
    from ttbench.cli import USER_ERRORS

    cfg = compose(_job(argv[1:]))
    try:
        validate(cfg)
    except USER_ERRORS as e:  # only a file the page asks the user to provide may be missing
        assert any(key in str(e) for key in PROVIDED), (page, e)


@pytest.mark.parametrize(
    "page,argv", [c for c in COMMANDS if c[1][0] not in HYDRA_APPS], ids=lambda c: str(c)[:60]
)
def test_each_other_command_parses(page, argv, tmp_path, monkeypatch):
    """Flags as written are the command's own: run in an empty folder, the command may refuse
    the missing inputs (one line, status 2), but never its arguments."""

    def refuse(parser, message):
        raise AssertionError(f"{page}: {' '.join(argv)}: {message}")

    monkeypatch.setattr(argparse.ArgumentParser, "error", refuse)
    monkeypatch.chdir(tmp_path)
    module = importlib.import_module(argv[0])
    if hasattr(module, "__path__"):  # `python -m package` runs its __main__
        module = importlib.import_module(f"{argv[0]}.__main__")
    main = module.main
    assert main(argv[1:]) in (0, 2)


@pytest.mark.parametrize("page,code", blocks("python"), ids=lambda c: str(c)[:40])
def test_each_python_snippet_compiles(page, code):
    compile(code, page, "exec")


def test_the_readme_spec_snippet_runs():
    (code,) = [c for _, c in blocks("python") if "validate(compose(" in c][:1]
    namespace: dict = {}
    exec(code, namespace)
    assert namespace["spec"].train.lr == 0.01 and namespace["spec"].seed == 3
