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
# # Probes: Figs. 3, 4 and 9
#
# From the probe tables (`probe_<name>.parquet`, written by runs with `probes=[...]` and
# gathered by `python -m ttbench.collect`) in `$TTBENCH_TABLES` (default `outputs/tables`);
# figures into `$TTBENCH_FIGURES` (default `outputs/figures`). A figure whose probe table is
# absent is skipped with its reason.

# %%
import os
from pathlib import Path

from ttbench import figures

TABLES = Path(os.environ.get("TTBENCH_TABLES", "outputs/tables"))
FIGURES = Path(os.environ.get("TTBENCH_FIGURES", "outputs/figures"))
tables = figures.load(TABLES)
print(f"{TABLES}: tables {sorted(tables.extra) or 'none'} beside results and curves")

# %% [markdown]
# ## Fig. 4: projected Theta (error and build time vs D0) and the spectrum of Theta vs n

# %%
figures.draw("fig4_projection", tables, FIGURES)

# %% [markdown]
# ## Fig. 3: t-SNE of per-sample gradients vs features, and of predicted trajectories

# %%
figures.draw("fig3_clustering", tables, FIGURES)

# %% [markdown]
# ## Fig. 9: prediction error in weight space vs function space over time

# %%
figures.draw("fig9_weight_function", tables, FIGURES)
