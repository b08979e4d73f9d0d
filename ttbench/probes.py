"""Extra measurements of a run for the paper's Figs. 3, 4 and 9, chosen by `probes=[...]`.

Each probe takes the fine-tuning model at w0 (its own copy), the task and the run config, and
returns one long-format table that run.py writes as probe_<name>.parquet.
"""

from __future__ import annotations

from collections.abc import Callable

import pandas as pd
import torch
from omegaconf import DictConfig
from torch import nn

Probe = Callable[[nn.Module, torch.Tensor, torch.Tensor, DictConfig], pd.DataFrame]

PROBES: dict[str, Probe] = {}
