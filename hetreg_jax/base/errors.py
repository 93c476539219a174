"""The project's error types: what a user can cause and fix, as opposed to a bug in the code.

The command lines (``main.py``/``hetreg``, ``python -m hetreg_jax.experiments``, ``.bench``,
``.compare``) print a `HetregError` or an ``OSError`` (a full disk, a permission, a file that
vanished) as one line, ``error: <message>``; anything else is a programming error and keeps its
traceback. Each type also subclasses the builtin it replaces, so ``except ValueError`` (or
``FileNotFoundError``, ``FloatingPointError``) still catches it.

    HetregError                        any of the project's own errors
    InputError(ValueError)             a bad config key or value, flag, image shape or orientation, an
                                       empty mask or split, a checkpoint of another config
    MissingFileError(FileNotFoundError) a data file, config file, workdir or checkpoint that is not there
    NonFiniteError(FloatingPointError) a non-finite loss or parameters during training
"""

from __future__ import annotations


class HetregError(Exception):
    """An error the user can fix (a bad input, a missing file): reported in one line by the command lines."""


class InputError(HetregError, ValueError):
    """A bad config key or value, flag, shape, orientation or data content."""


class MissingFileError(HetregError, FileNotFoundError):
    """A file or folder the run needs (data, config, workdir, checkpoint) is not there."""


class NonFiniteError(HetregError, FloatingPointError):
    """Training produced a non-finite loss or non-finite parameters."""


# Reported in one line by the command lines: the project's errors and the operating system's.
ONE_LINE_ERRORS = (HetregError, OSError)
