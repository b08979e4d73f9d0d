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
# # Cost: Fig. 5, wall-clock of the prediction vs fine-tuning
#
# Tables from `$TTBENCH_TABLES` (default `outputs/tables`), figures into `$TTBENCH_FIGURES`
# (default `outputs/figures`). The prediction's time includes building Theta; fine-tuning is
# the real run of T steps on the same device.

# %%
import os
from pathlib import Path

from ttbench import figures
from ttbench.figures import tables as tb

TABLES = Path(os.environ.get("TTBENCH_TABLES", "outputs/tables"))
FIGURES = Path(os.environ.get("TTBENCH_FIGURES", "outputs/figures"))
tables = figures.load(TABLES)
print(f"{TABLES}: {len(tables.results)} result rows")

# %% [markdown]
# ## Median seconds and ratio fine-tuning / prediction, per device and predictor

# %%
if len(tables.results):
    print(tb.cost_summary(tables.results).to_string(index=False))
    print(tb.cost_summary(tables.results, by=("device", "dataset", "predictor")).to_string())

# %% [markdown]
# ## Fig. 5

# %%
figures.draw("fig5_cost", tables, FIGURES)
