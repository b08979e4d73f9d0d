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
# # Accuracy of the predicted training time: Fig. 1, Table 1, Fig. 6
#
# Reads the tables of `python -m ttbench.collect` from `$TTBENCH_TABLES` (default
# `outputs/tables`) and writes the figures into `$TTBENCH_FIGURES` (default
# `outputs/figures`). The logic lives in `ttbench.figures`; this notebook only calls it.
# Open it in Jupyter with jupytext, or run it as a script: `python analysis/accuracy.py`.

# %%
import os
from pathlib import Path

from ttbench import figures
from ttbench.figures import accuracy
from ttbench.figures import tables as tb

TABLES = Path(os.environ.get("TTBENCH_TABLES", "outputs/tables"))
FIGURES = Path(os.environ.get("TTBENCH_FIGURES", "outputs/figures"))
tables = figures.load(TABLES)
print(f"{TABLES}: {len(tables.results)} result rows")

# %% [markdown]
# ## Fig. 1: predicted vs real T_eps
#
# GD and SGD panels (preset `fig1_gd` / `fig1_sgd`, else every run of that optimiser), the
# bisector, the +/-13% and +/-20% bands, and per predictor the share of points inside them.

# %%
figures.draw("fig1_scatter", tables, FIGURES)
for optim in ("gd", "sgd"):
    rows = accuracy.fig1_rows(tables.results, optim) if len(tables.results) else tables.results
    if len(rows):
        print(optim.upper(), "\n", tb.share_within(rows).to_string(index=False))

# %% [markdown]
# ## Table 1: mean absolute error (steps) by dataset, eps and learning rate
#
# The ODE's T_eps of the loss under GD; the regime label says whether lr >= `tb.HIGH_LR`
# (the paper's high learning rate, 0.005).

# %%
figures.draw("table1_mae", tables, FIGURES)
if len(tables.results):
    print(tb.table1_markdown(tb.table1(tables.results)))

# %% [markdown]
# ## Fig. 6: error vs learning rate, batch size and task size (mean, 95% CI)

# %%
figures.draw("fig6_sensitivity", tables, FIGURES)
