# ---
# jupyter:
#   jupytext:
#     formats: py:percent
#     text_representation:
#       extension: .py
#       format_name: percent
#   kernelspec:
#     display_name: Python 3
#     language: python
#     name: python3
# ---

# %% [markdown]
# # The one-page report
#
# The paper's headline numbers recomputed from `$TTBENCH_TABLES` (default `outputs/tables`):
# share of predictions within 13% / 20%, the cost ratio, the per-dataset table and the band
# coverage of the stochastic predictors. Written to `$TTBENCH_FIGURES/report.md`.

# %%
import os
from pathlib import Path

from ttbench import figures
from ttbench.figures.report import build_report, report_numbers, write_report

TABLES = Path(os.environ.get("TTBENCH_TABLES", "outputs/tables"))
FIGURES = Path(os.environ.get("TTBENCH_FIGURES", "outputs/figures"))
tables = figures.load(TABLES)
print(f"{TABLES}: {len(tables.results)} result rows")

# %% [markdown]
# ## The numbers, as tables

# %%
if len(tables.results):
    for name, frame in report_numbers(tables.results).items():
        print(f"{name}:\n{frame.to_string(index=False)}\n")

# %% [markdown]
# ## The report

# %%
if len(tables.results):
    written = sorted(p.name for p in FIGURES.glob("*") if p.name != "report.md")
    write_report(tables, FIGURES / "report.md", written)
    print(f"report: {FIGURES / 'report.md'}\n")
    print(build_report(tables, written))
else:
    print(f"no results table in {TABLES}: run python -m ttbench.collect first")
