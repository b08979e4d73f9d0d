"""What the Hydra entry points share: the checks before Hydra starts, and the errors a user can
cause, printed as one line with exit status 2 instead of a traceback."""

from __future__ import annotations

import sys
import warnings
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import NoReturn

from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig

from ttbench.config import compose, register_resolvers
from ttbench.errors import USER_ERRORS
from ttbench.settings import Settings
from ttbench.validate import check_cli, validate

__all__ = ["USER_ERRORS", "check_argv", "command", "error", "job", "main", "one_line_errors"]
_checked: set[tuple[str, ...]] = set()


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


def check_argv() -> None:
    """The command line's checks, as one line and status 2 on a user's error: the command
    line itself and, for a single run, its config validated (a sweep's jobs are, by the
    sweeper). The Hydra apps call it at the top of their module, before importing torch, so
    that a mistyped value is answered in about a second; main() does not check twice."""
    register_resolvers()
    argv = sys.argv[1:]
    if tuple(argv) in _checked:
        return
    multirun = "-m" in argv or "--multirun" in argv
    with one_line_errors():
        check_cli(argv, Settings().out_root)
        if not multirun:
            task = [a for a in argv if "=" in a and not a.lstrip("+~").startswith("hydra")]
            validate(compose(task))
    _checked.add(tuple(argv))


def main(app: Callable[[], None], run_dir: str | None = None, extra: Sequence[str] = ()) -> None:
    """Run a Hydra app from the command line: its checks (check_argv) before Hydra makes its
    directory; `run_dir` puts a single run's Hydra output elsewhere; `extra` are Hydra
    overrides of the app's own, after the user's."""
    # torch's forward-mode AD compiles its decompositions by torch.jit.script on the first jvp,
    # which warns that jit is deprecated: nothing the user can act on
    warnings.filterwarnings("ignore", "`torch.jit.script` is deprecated", FutureWarning)
    check_argv()
    _checked.clear()  # a later main() in this process checks its command line again
    argv = sys.argv[1:]
    multirun = "-m" in argv or "--multirun" in argv
    if run_dir is not None and not multirun:
        sys.argv += [f"hydra.run.dir={run_dir}", "hydra.output_subdir=null"]
    sys.argv += list(extra)
    app()
