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
# # Curves: Figs. 2 and 12, 8 and 10, 7 and 11
#
# Tables from `$TTBENCH_TABLES` (default `outputs/tables`), figures into `$TTBENCH_FIGURES`
# (default `outputs/figures`). Real curves are black, each predictor has its colour
# (`ttbench.predictors.color`) in every figure; in Figs. 2 and 12 colour is the effective
# learning rate instead, since every curve there is a real one.

# %%
import os
from pathlib import Path

from ttbench import figures
from ttbench.figures import curves

TABLES = Path(os.environ.get("TTBENCH_TABLES", "outputs/tables"))
FIGURES = Path(os.environ.get("TTBENCH_FIGURES", "outputs/figures"))
tables = figures.load(TABLES)
print(f"{TABLES}: {len(tables.results)} result rows, {len(tables.curves)} curve rows")

# %% [markdown]
# ## Figs. 2 (right) and 12: equal effective learning rate, equal curves
#
# Preset `fig2_elr`, else every task fine-tuned with several (lr, momentum).

# %%
if len(tables.results):
    for task in curves.elr_tasks(tables.results):
        print(task[["dataset", "cfg.seed", "cfg.lr", "cfg.momentum"]].to_string(index=False))
figures.draw("fig2_elr", tables, FIGURES)

# %% [markdown]
# ## Figs. 8 and 10: real vs predicted loss and error curves, stochastic bands, T_eps per eps
#
# Preset `fig8_noise` (e.g. GD, SGD with constant noise, SGD with rescaled noise), else one
# GD and one SGD run.

# %%
if len(tables.results) and len(tables.curves):
    print(curves.fig8_runs(tables)["run"].to_string(index=False))
figures.draw("fig8_curves", tables, FIGURES)

# %% [markdown]
# ## Figs. 7 and 11: from a subset of N0 samples to all N (MSE, Appendix D)

# %%
figures.draw("fig7_subset", tables, FIGURES)
