"""What the Hydra entry points share: the checks before Hydra starts, and the errors a user can
cause, printed as one line with exit status 2 instead of a traceback."""

from __future__ import annotations

import sys
import warnings
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import NoReturn

from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, OmegaConf

from ttbench.bands import CalibrationError
from ttbench.config import CONF_DIR, compose, register_resolvers
from ttbench.data.images import DataNotFound
from ttbench.models.zoo import WeightsNotFound
from ttbench.record import WriteError
from ttbench.validate import ConfigError, check_cli, validate

# Bad input, found before or during a run: the message is one line for the user.
USER_ERRORS = (ConfigError, DataNotFound, WeightsNotFound, WriteError, CalibrationError)


def error(message: object) -> int:
    """The one way every entry point reports a user's error: one line on stderr; returns the
    exit status (2)."""
    print(f"ttbench: error: {message}", file=sys.stderr)
    return 2


def fail(e: Exception) -> None:
    raise SystemExit(error(e))


@contextmanager
def one_line_errors() -> Iterator[None]:
    """Turn a user's error (USER_ERRORS) into its one line and exit status 2."""
    try:
        yield
    except USER_ERRORS as e:
        fail(e)


@contextmanager
def job(cfg: DictConfig) -> Iterator[HydraConfig | None]:
    """The body of every Hydra app (run, plan, pretrain): torch's CPU threads set for its
    launcher, a user's error as one line. Yields Hydra's runtime config (None in-process)."""
    from ttbench import build  # torch: only once the command line has been checked

    hc = HydraConfig.get() if HydraConfig.initialized() else None  # None: called in-process
    launcher = str(hc.launcher.get("_target_", "")) if hc is not None else ""
    build.cpu_threads(build.launcher_threads(launcher, cfg.threads))
    with one_line_errors():
        yield hc


def command(main: Callable[[], int | None]) -> NoReturn:
    """Run an argparse entry point (collect, figures, judge, sweep, the benchmarks): a user's
    error as one line and status 2, else main's status (None: 0)."""
    with one_line_errors():
        status = main()
    raise SystemExit(status or 0)


def main(app: Callable[[], None], run_dir: str | None = None, extra: Sequence[str] = ()) -> None:
    """Run a Hydra app from the command line: resolvers known, the command line checked and,
    for a single run, its config validated before Hydra makes its directory (a sweep's jobs
    are, by the sweeper); `run_dir` puts a single run's Hydra output elsewhere; `extra` are
    Hydra overrides of the app's own, after the user's."""
    register_resolvers()
    # torch's forward-mode AD compiles its decompositions by torch.jit.script on the first jvp,
    # which warns that jit is deprecated: nothing the user can act on
    warnings.filterwarnings("ignore", "`torch.jit.script` is deprecated", FutureWarning)
    argv = sys.argv[1:]
    multirun = "-m" in argv or "--multirun" in argv
    with one_line_errors():
        check_cli(argv, OmegaConf.load(CONF_DIR / "config.yaml").out_root)
        if not multirun:
            task = [a for a in argv if "=" in a and not a.lstrip("+~").startswith("hydra")]
            validate(compose(task))
    if run_dir is not None and not multirun:
        sys.argv += [f"hydra.run.dir={run_dir}", "hydra.output_subdir=null"]
    sys.argv += list(extra)
    app()
