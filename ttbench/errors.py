"""The errors a user's input or machine can cause: every entry point prints them as one line
and exits with status 2 (`ttbench.cli`), never as a traceback. Free of torch, so that a bad
command line is answered before torch is imported."""

from __future__ import annotations


class ConfigError(ValueError):
    """A setting with a bad value: the message names the key, the value and what is allowed."""

    def __init__(self, key: str, value: object, allowed: str) -> None:
        super().__init__(f"{key}={value!r} is invalid: {allowed}")
        self.key, self.value, self.allowed = key, value, allowed


class DataNotFound(RuntimeError):
    """Missing or unreadable data; the message is one line for the user."""


class WeightsNotFound(RuntimeError):
    """Missing or mismatching weights; the message is one line for the user."""


class WriteError(OSError):
    """A record that could not be written (a full disk, a lost mount); one line for the user."""


class CalibrationError(RuntimeError):
    """The shipped calibration does not read back (a damaged install)."""


USER_ERRORS = (ConfigError, DataNotFound, WeightsNotFound, WriteError, CalibrationError)
