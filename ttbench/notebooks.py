"""`python -m ttbench.notebooks`: execute every analysis notebook as a notebook, in a Jupyter
kernel, and keep the executed copies (the optional extra `ttbench[notebooks]`).

The notebooks are percent-format scripts (`analysis/*.py`, jupytext): each is read by
jupytext, run by nbclient in a fresh python3 kernel with `TTBENCH_TABLES` and
`TTBENCH_FIGURES` set, and written executed, outputs included, as `<out>/<name>.ipynb`. One
line per notebook; the status is 1 when one failed, and the failing cell's error is printed.
"""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

from ttbench import cli


def execute(notebook: Path, out_dir: Path, timeout_s: int = 600) -> Path:
    """Run one percent-format notebook in a fresh kernel; the executed .ipynb's path."""
    import jupytext
    from nbclient import NotebookClient

    nb = jupytext.read(notebook)
    NotebookClient(nb, timeout=timeout_s, kernel_name="python3").execute()
    out = out_dir / f"{notebook.stem}.ipynb"
    out_dir.mkdir(parents=True, exist_ok=True)
    jupytext.write(nb, out)
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("tables", type=Path, help="the tables of python -m ttbench.collect")
    p.add_argument("--notebooks", type=Path, default=Path("analysis"))
    p.add_argument("--figures", type=Path, default=Path("outputs/figures"))
    p.add_argument("--out", type=Path, default=Path("outputs/notebooks"))
    a = p.parse_args(argv)
    paths = sorted(a.notebooks.glob("*.py"))
    if not paths:
        return cli.error(f"no notebooks (*.py) in {a.notebooks}")
    if not (a.tables / "results.parquet").is_file():
        return cli.error(f"no results.parquet in {a.tables}: run python -m ttbench.collect first")
    try:
        import jupytext  # noqa: F401
        import nbclient  # noqa: F401
    except ImportError as e:
        return cli.error(f"{e.name} is missing: pip install 'ttbench[notebooks]'")
    os.environ["TTBENCH_TABLES"] = str(a.tables.resolve())
    os.environ["TTBENCH_FIGURES"] = str(a.figures.resolve())
    failed = 0
    for path in paths:
        start = time.perf_counter()
        try:
            out = execute(path, a.out)
        except Exception as e:  # a failing cell: report it and carry on with the next
            failed += 1
            first = str(e).strip().splitlines()[-1] if str(e).strip() else type(e).__name__
            print(f"{path.name}: FAILED ({first})")
            continue
        print(f"{path.name}: {out} ({time.perf_counter() - start:.1f} s)")
    print(f"{len(paths) - failed} executed, {failed} failed -> {a.out}")
    return 1 if failed else 0


if __name__ == "__main__":
    cli.command(main)
