"""ttbench: predict how many steps fine-tuning needs, without training (Zancato et al., 2020).

The Python API, for a model in eval mode, inputs x and labels y:

    lin = ttbench.linearize(model, x)                       # f0 and Theta at w0
    pred = ttbench.predict("ode", lin.theta, lin.f0, y, lr=0.01, momentum=0.0, steps=150, loss="ce")
    ttbench.t_eps(pred.curves.loss, 0.1)                    # predicted steps to within 10%
"""

from ttbench.core.curves import Curves, t_eps, t_eps_grid
from ttbench.core.dynamics import Prediction, closed_form, discrete, elr, ode
from ttbench.core.linearize import Linearization, LinearizedModel, linearize
from ttbench.core.sgd import batch_paths, exact_sgd, sde
from ttbench.core.spectrum import spectrum
from ttbench.predictors import PREDICTORS, predict

__version__ = "0.1.0"
__all__ = [
    "PREDICTORS",
    "Curves",
    "Linearization",
    "LinearizedModel",
    "Prediction",
    "batch_paths",
    "closed_form",
    "discrete",
    "elr",
    "exact_sgd",
    "linearize",
    "ode",
    "predict",
    "sde",
    "spectrum",
    "t_eps",
    "t_eps_grid",
]
