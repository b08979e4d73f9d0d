"""`python -m ttbench.figures TABLE_DIR --out FIG_DIR`: every figure and table of the paper,
and the report, from the tables of `python -m ttbench.collect`; one line per artefact."""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from ttbench import cli
from ttbench.figures import ARTEFACTS, REPORT, load, render_all
from ttbench.figures.tables import HIGH_LR


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("tables", type=Path, nargs="?", default=Path("outputs/tables"))
    p.add_argument("--out", type=Path, default=Path("outputs/figures"))
    names = [a.name for a in ARTEFACTS] + [REPORT]
    p.add_argument("--only", nargs="+", choices=names, metavar="NAME", help=", ".join(names))
    p.add_argument(
        "--high-lr",
        type=float,
        default=HIGH_LR,
        help="Table 1: a learning rate at or above this is the 'high' regime (paper: 0.005)",
    )
    a = p.parse_args(argv)
    if not (a.tables / "results.parquet").is_file():
        return cli.error(f"no results.parquet in {a.tables}: run python -m ttbench.collect first")
    start = time.perf_counter()
    try:
        tables = load(a.tables)
    except (OSError, ValueError) as e:  # pyarrow's errors are ValueErrors
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        return cli.error(f"cannot read the tables in {a.tables} ({first})")
    if not len(tables.results):
        return cli.error(f"{a.tables}/results.parquet has no rows")
    print(f"{a.tables}: {tables.results['run'].nunique()} runs, {len(tables.results)} rows")
    status = render_all(tables, a.out, a.only, a.high_lr)
    counts = {s: list(status.values()).count(s) for s in ("wrote", "skipped", "failed")}
    print(
        f"{counts['wrote']} written, {counts['skipped']} skipped, {counts['failed']} failed "
        f"-> {a.out} ({time.perf_counter() - start:.1f} s)"
    )
    return 1 if counts["failed"] else 0


if __name__ == "__main__":
    cli.command(main)
