"""Regenerate the paper's figures and tables from the results table of `ttbench.collect`.

`python -m ttbench.figures TABLE_DIR --out FIG_DIR` writes every artefact of ARTEFACTS; each
figure is also a plain function `(tables, out_path) -> None` writing out_path.png and .pdf,
which raises `Skip` (with a one-line reason) when the rows it needs are absent.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from functools import partial
from pathlib import Path

from ttbench.figures import tables
from ttbench.figures.accuracy import fig1_scatter, fig6_sensitivity, table1_write
from ttbench.figures.cost import fig5_cost
from ttbench.figures.curves import fig2_elr, fig7_subset, fig8_curves
from ttbench.figures.fidelity import fidelity_write
from ttbench.figures.probe_figures import fig3_clustering, fig4_projection, fig9_weight_function
from ttbench.figures.report import write_report
from ttbench.figures.style import Skip
from ttbench.figures.tables import HIGH_LR, Tables, load


@dataclass(frozen=True)
class Artefact:
    name: str  # file stem under the output folder
    make: Callable[[Tables, Path], None]
    suffixes: tuple[str, ...]
    what: str


ARTEFACTS: tuple[Artefact, ...] = (
    Artefact("fig1_scatter", fig1_scatter, (".png", ".pdf"), "Fig. 1: predicted vs real T_eps"),
    Artefact("table1_mae", table1_write, (".md", ".tex"), "Table 1: mean absolute error"),
    Artefact("fig2_elr", fig2_elr, (".png", ".pdf"), "Figs. 2 and 12: equal effective lr"),
    Artefact("fig3_clustering", fig3_clustering, (".png", ".pdf"), "Fig. 3: t-SNE"),
    Artefact("fig4_projection", fig4_projection, (".png", ".pdf"), "Fig. 4: projection, spectra"),
    Artefact("fig5_cost", fig5_cost, (".png", ".pdf"), "Fig. 5: wall-clock"),
    Artefact("fig6_sensitivity", fig6_sensitivity, (".png", ".pdf"), "Fig. 6: error vs lr, B, N"),
    Artefact("fig7_subset", fig7_subset, (".png", ".pdf"), "Figs. 7 and 11: subset to full"),
    Artefact("fig8_curves", fig8_curves, (".png", ".pdf"), "Figs. 8 and 10: curves and bands"),
    Artefact(
        "fig9_weight_function", fig9_weight_function, (".png", ".pdf"), "Fig. 9: w vs f space"
    ),
    Artefact("fidelity", fidelity_write, (".md",), "trust: accuracy, bands, validity, cost"),
)
REPORT = "report"


def artefact(name: str) -> Artefact:
    return next(a for a in ARTEFACTS if a.name == name)


def render(
    art: Artefact | str, tables: Tables, out_dir: str | Path, high_lr: float = HIGH_LR
) -> tuple[str, str]:
    """Make one artefact; (status, one-line message), status in wrote | skipped | failed.
    Failures are reported, not raised, so one broken figure never hides the others."""
    art = artefact(art) if isinstance(art, str) else art
    make = partial(art.make, high_lr=high_lr) if art.make is table1_write else art.make
    out = Path(out_dir) / art.name
    start = time.perf_counter()
    try:
        make(tables, out)
    except Skip as e:
        return "skipped", f"{art.name}: skipped ({e})"
    except Exception as e:  # report and carry on with the next artefact
        return "failed", f"{art.name}: FAILED ({type(e).__name__}: {e})"
    files = ", ".join(str(out.with_suffix(s)) for s in art.suffixes)
    return "wrote", f"{art.name}: {files} ({time.perf_counter() - start:.1f} s)"


def draw(name: str, tables: Tables, out_dir: str | Path, high_lr: float = HIGH_LR) -> str:
    """For notebooks: render one artefact, print its line and, inside a Jupyter kernel,
    display the PNG. Returns the status."""
    status, line = render(name, tables, out_dir, high_lr)
    print(line)
    png = Path(out_dir) / f"{name}.png"
    if status == "wrote" and png.is_file():
        try:
            from IPython import get_ipython
            from IPython.display import Image, display
        except ImportError:  # plain python: the file is the output
            return status
        if get_ipython() is not None:
            display(Image(filename=str(png)))
    return status


def render_all(
    tables: Tables,
    out_dir: str | Path,
    only: Iterable[str] | None = None,
    high_lr: float = HIGH_LR,
    echo: Callable[[str], None] = print,
) -> dict[str, str]:
    """Every artefact (or those named), then the report linking those written; echo prints
    one line per artefact as it is done. Returns {name: status}."""
    wanted = set(only) if only else None
    status = {}
    written: list[str] = []
    for art in ARTEFACTS:
        if wanted is not None and art.name not in wanted:
            continue
        status[art.name], line = render(art, tables, out_dir, high_lr)
        echo(line)
        if status[art.name] == "wrote":
            written += [f"{art.name}{s}" for s in art.suffixes]
    if wanted is None or REPORT in wanted:
        out = Path(out_dir) / f"{REPORT}.md"
        try:
            write_report(tables, out, written)
            status[REPORT], line = "wrote", f"{REPORT}: {out}"
        except Skip as e:
            status[REPORT], line = "skipped", f"{REPORT}: skipped ({e})"
        echo(line)
    return status


__all__ = [
    "ARTEFACTS",
    "REPORT",
    "Artefact",
    "Skip",
    "Tables",
    "artefact",
    "draw",
    "load",
    "render",
    "render_all",
    "tables",
]
