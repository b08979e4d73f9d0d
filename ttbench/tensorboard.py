"""A run's real and predicted curves and its T_eps table as TensorBoard scalars
(`tensorboard=true`, off by default: it needs the `tensorboard` package, the extra
`ttbench[tensorboard]`). Written into <run dir>/tensorboard after the record:

    loss/<curve>, error/<curve>       every recorded step (curve: real or a predictor)
    t_eps_<kind>/<curve>               its T_eps, at step = eps in thousandths (eps 0.05: 50)
    t_eps (text)                       the run's summary table
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from pathlib import Path

from ttbench.core.curves import Curves
from ttbench.record import Record


def write_run(log_dir: Path, curves: Mapping[str, Curves], rec: Record, summary: str) -> None:
    from torch.utils.tensorboard import SummaryWriter

    writer = SummaryWriter(str(log_dir))
    try:
        for name, c in curves.items():
            for kind, values in (("loss", c.loss), ("error", c.error)):
                for i, v in enumerate(values):
                    if math.isfinite(v):
                        writer.add_scalar(f"{kind}/{name}", float(v), i * c.interval)
        times = {"real": rec.real.t_eps} | {n: p.t_eps for n, p in rec.predictors.items()}
        for name, by_kind in times.items():
            for kind, ts in by_kind.items():
                for eps, t in zip(rec.eps, ts, strict=True):
                    if t is not None:
                        writer.add_scalar(f"t_eps_{kind}/{name}", t, round(eps * 1000))
        writer.add_text("t_eps", "```\n" + summary + "\n```")
    finally:
        writer.close()
