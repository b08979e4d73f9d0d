"""ttbench: predict how many steps fine-tuning needs, without training (Zancato et al., 2020).

The Python API, for a model in eval mode, inputs x and labels y:

    lin = ttbench.linearize(model, x)                       # f0 and Theta at w0
    pred = ttbench.predict("ode", lin.theta, lin.f0, y, lr=0.01, momentum=0.0, steps=150, loss="ce")
    ttbench.t_eps(pred.curves.loss, 0.1)                    # predicted steps to within 10%
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

# Each public name and its home. Loaded on first use (PEP 562) so that `import ttbench` and
# the command lines' config checks do not pay for torch (about 2 s on 2 cores).
_HOMES = {
    "Curves": "ttbench.core.curves",
    "t_eps": "ttbench.core.curves",
    "t_eps_grid": "ttbench.core.curves",
    "Prediction": "ttbench.core.dynamics",
    "closed_form": "ttbench.core.dynamics",
    "discrete": "ttbench.core.dynamics",
    "elr": "ttbench.core.dynamics",
    "ode": "ttbench.core.dynamics",
    "Linearization": "ttbench.core.linearize",
    "LinearizedModel": "ttbench.core.linearize",
    "linearize": "ttbench.core.linearize",
    "batch_paths": "ttbench.core.sgd",
    "exact_sgd": "ttbench.core.sgd",
    "sde": "ttbench.core.sgd",
    "spectrum": "ttbench.core.spectrum",
    "PREDICTORS": "ttbench.predictors",
    "predict": "ttbench.predictors",
    "JobPrediction": "ttbench.job",
    "predict_job": "ttbench.job",
    "Tracker": "ttbench.tracker",
}

if TYPE_CHECKING:
    from ttbench.core.curves import Curves, t_eps, t_eps_grid
    from ttbench.core.dynamics import Prediction, closed_form, discrete, elr, ode
    from ttbench.core.linearize import Linearization, LinearizedModel, linearize
    from ttbench.core.sgd import batch_paths, exact_sgd, sde
    from ttbench.core.spectrum import spectrum
    from ttbench.job import JobPrediction, predict_job
    from ttbench.predictors import PREDICTORS, predict
    from ttbench.tracker import Tracker

__version__ = "0.1.0"
__all__ = [  # spelled out for linters and IDEs; a test keeps it equal to _HOMES
    "PREDICTORS",
    "Curves",
    "JobPrediction",
    "Linearization",
    "LinearizedModel",
    "Prediction",
    "Tracker",
    "batch_paths",
    "closed_form",
    "discrete",
    "elr",
    "exact_sgd",
    "linearize",
    "ode",
    "predict",
    "predict_job",
    "sde",
    "spectrum",
    "t_eps",
    "t_eps_grid",
]


def __getattr__(name: str) -> Any:
    if name not in _HOMES:
        raise AttributeError(f"module 'ttbench' has no attribute {name!r}")
    value = getattr(importlib.import_module(_HOMES[name]), name)
    globals()[name] = value  # once loaded, a plain attribute
    return value


def __dir__() -> list[str]:
    return sorted([*globals(), *_HOMES])
