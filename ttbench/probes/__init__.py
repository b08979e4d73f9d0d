"""Extra measurements of a run for the paper's Figs. 3, 4 and 9, chosen by `probes=[...]`.

Each probe takes the fine-tuning model at w0 (its own copy), the task and the run spec, and
returns one long-format table that run.py writes as probe_<name>.parquet:

* spectrum (Fig. 4 right, Fig. 11): eigenvalues of Theta / n and residual projections on
  nested random subsets, with the fitted power law;
* projection (Fig. 4 centre): error, time and storage of sketched Thetas against the exact one;
* clustering (Fig. 3): per-sample principal components of gradients and features, and the
  per-sample predicted loss trajectory and training time;
* weight_function (Fig. 9): linearised against real fine-tuning, in weight and function space.

The config-free functions behind them (`spectrum_frame`, `projection_frame`, ...) are usable on
their own; bench/modes.py uses them.
"""

from __future__ import annotations

from collections.abc import Callable

import pandas as pd
import torch
from torch import nn

from ttbench.probes.clustering import clustering_frame, clustering_probe
from ttbench.probes.projection import projection_frame, projection_probe
from ttbench.probes.spectrum import spectrum_frame, spectrum_probe
from ttbench.probes.weights import weight_function_frame
from ttbench.spec import RunSpec

Probe = Callable[[nn.Module, torch.Tensor, torch.Tensor, RunSpec], pd.DataFrame]

PROBES: dict[str, Probe] = {
    "spectrum": spectrum_probe,
    "projection": projection_probe,
    "clustering": clustering_probe,
    "weight_function": weight_function_frame,
}

__all__ = [
    "PROBES",
    "Probe",
    "clustering_frame",
    "projection_frame",
    "spectrum_frame",
    "weight_function_frame",
]
