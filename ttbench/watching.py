"""What a run does alongside its fine-tuning: the stability watch (ttbench.core.stability),
timed apart from the fine-tuning and announcing a spike in the log as soon as it sees one; and
which states fine-tuning keeps for the refined predictions (`keeper`)."""

from __future__ import annotations

import logging

import numpy as np

from ttbench import record
from ttbench import stages as stages_
from ttbench.core.curves import settled
from ttbench.core.stability import (
    CONVERGES,
    DIVERGES,
    SPIKE_AHEAD,
    Forecast,
    Watch,
    forecast,
    subsample,
)
from ttbench.prediction import prefix_stage
from ttbench.predictors import PREDICTORS, SETTLED, refine_step
from ttbench.spec import RunSpec
from ttbench.stages import Stages, timed

log = logging.getLogger("ttbench.run")

ANNOUNCE = {  # what the watch says when its forecast changes (ttbench.core.stability)
    SPIKE_AHEAD: "GD has crossed the edge of stability: a spike is ahead (the loss will rise, "
    "then recover or explode)",
    DIVERGES: "GD is strongly unstable this early, with momentum: the loss is likely to explode",
    CONVERGES: "stable",
}


class Watching:
    """The stability watch (ttbench.core.stability.Watch) as fine-tuning calls it: timed apart
    from the fine-tuning, its values kept in `kept["watch"]` (so a resumed run has them), and
    the first announcement of a spike logged when it is made."""

    def __init__(self, spec: RunSpec, x, kept: dict, device) -> None:
        idx = subsample(len(x), spec.watch.samples, spec.seed).to(x.device)
        t = spec.train
        self.watch = Watch(t.lr, t.momentum, t.loss, x[idx], frozenset(spec.watch.steps))
        self.watch.values = kept.setdefault("watch", {})
        self.threshold, self.momentum, self.device = spec.watch.threshold, t.momentum, device
        self.seconds: dict[int, float] = {}

    def __call__(self, t: int, model) -> None:
        if t not in self.watch.steps or t in self.watch.values:
            return
        before = self.forecast().verdict
        value, self.seconds[t] = timed(lambda: self.watch(t, model), self.device)
        now = self.forecast().verdict
        if now != before:
            log.warning(
                "step %d: lr * lambda_max / (2 (1 + m)) = %.3g (threshold %g): %s",
                t,
                value,
                self.threshold,
                ANNOUNCE[now],
            )

    def forecast(self) -> Forecast:
        return forecast(self.watch.values, self.momentum, self.threshold)

    def record(self, stages: Stages, kept: dict) -> record.Watched:
        """Moves the watch's time out of the fine-tuning (and out of the real steps each refined
        prediction observed) into the stage `watch`; the record's part."""
        stages.carve(stages_.WATCH, sum(self.seconds.values()))
        for at, state in kept.get("states", {}).items():
            if prefix_stage(at) in stages.stats:
                before = sum(s for t, s in self.seconds.items() if t <= state["step"])
                stages.stats[prefix_stage(at)]["wall_s"] -= before
        f = self.forecast()
        return record.Watched(dict(self.watch.values), f.verdict, f.at, self.threshold)


def keeper(spec: RunSpec, watching: Watching | None):
    """keep(t, loss) for fine-tuning: the states the refined predictors start from (their
    `at`), SETTLED at the first recorded step from k on where the loss has settled and the last
    watched stability is below its threshold."""
    refined = [PREDICTORS[n] for n in spec.predictors if PREDICTORS[n].prefix]
    k, every = spec.refine.steps, spec.train.eval_every
    fixed = {p.at: refine_step(p.at, k, every) for p in refined if p.at != SETTLED}
    wants_settled = any(p.at == SETTLED for p in refined)

    def keep(t: int, loss: np.ndarray) -> list[str]:
        names = [at for at, step in fixed.items() if step == t]
        if wants_settled and t >= k and settled(loss):
            watched = watching.watch.values if watching is not None else {}
            last = watched[max(watched)] if watched else 0.0
            if last < spec.watch.threshold:
                names.append(SETTLED)
        return names

    return keep
