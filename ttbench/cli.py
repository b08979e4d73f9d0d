"""What the Hydra entry points share: the checks before Hydra starts, and the errors a user can
cause, printed as one line with exit status 2 instead of a traceback."""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager

from omegaconf import OmegaConf

from ttbench.config import CONF_DIR, register_resolvers
from ttbench.data.images import DataNotFound
from ttbench.models.zoo import WeightsNotFound
from ttbench.validate import ConfigError, check_cli

# Bad input, found before or during a run: the message is one line for the user.
USER_ERRORS = (ConfigError, DataNotFound, WeightsNotFound)


def fail(error: Exception) -> None:
    print(f"ttbench: error: {error}", file=sys.stderr)
    raise SystemExit(2)


@contextmanager
def one_line_errors() -> Iterator[None]:
    """Turn a user's error (USER_ERRORS) into its one line and exit status 2."""
    try:
        yield
    except USER_ERRORS as e:
        fail(e)


def main(app: Callable[[], None]) -> None:
    """Run a Hydra app from the command line: resolvers known, the command line checked."""
    register_resolvers()
    with one_line_errors():
        check_cli(sys.argv[1:], OmegaConf.load(CONF_DIR / "config.yaml").out_root)
    app()
