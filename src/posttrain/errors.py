"""The one exception type the CLI reports as a single line.

A `UserError` is a mistake in what the user gave (a config key, a data file, a model path, a run
folder): `posttrain` prints its message, names the stage, and exits with status 2; `--debug` shows
the traceback as well. Anything else is a bug and keeps its traceback.
"""
from __future__ import annotations


class UserError(Exception):
    """Bad input: the message alone must say what is wrong and where (file, row, field, key)."""
