"""The convergence ETA of `ttbench.Tracker` as a PyTorch Lightning callback (the optional
extra `ttbench[lightning]`): it predicts when training starts, re-linearises as it goes, and
logs `eta_steps` to the progress bar and the loggers.

    trainer = lightning.Trainer(max_steps=1000, callbacks=[ConvergenceETA(eps=0.05)])

The LightningModule's forward must return the logits, its optimiser be a torch.optim.SGD
(the first one, if several), and its training_step return the loss (or {"loss": ...}).
"""

from __future__ import annotations

import math
from collections.abc import Mapping

from lightning.pytorch.callbacks import Callback

from ttbench.tracker import REFINE_AT, Tracker


class ConvergenceETA(Callback):
    def __init__(
        self,
        eps: float = 0.05,
        steps: int | None = None,
        loss="ce",
        theta: str = "hybrid",
        refine_at: tuple[float, ...] = REFINE_AT,
        data=None,
    ) -> None:
        """`steps`: the budget (default: the trainer's max_steps, else its estimated
        stepping batches); `data`: what the task is (default: the train dataloader)."""
        self.eps, self.steps, self.loss, self.theta = eps, steps, loss, theta
        self.refine_at, self.data = refine_at, data
        self.tracker: Tracker | None = None

    def on_train_start(self, trainer, pl_module) -> None:
        steps = self.steps or (
            trainer.max_steps if trainer.max_steps > 0 else int(trainer.estimated_stepping_batches)
        )
        data = self.data if self.data is not None else trainer.train_dataloader
        self.tracker = Tracker(
            pl_module,
            data,
            trainer.optimizers[0],
            steps,
            self.eps,
            self.loss,
            self.theta,
            self.refine_at,
            device=pl_module.device,
        )

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        loss = outputs["loss"] if isinstance(outputs, Mapping) else outputs
        eta = self.tracker.step(float(loss))
        left = math.nan if eta.steps_left is None else float(eta.steps_left)
        pl_module.log("eta_steps", left, prog_bar=True)
