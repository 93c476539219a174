"""A run's recorded ``config.json`` as a config again.

``python main.py --config=runs/x/config.json ...`` loads it (``main.py`` passes it to this file's
``get_config``), and ``--mode=eval`` / ``--mode=register`` use ``WORKDIR/config.json`` when no
``--config`` is given; ``hetreg_jax.load`` does the same. The recorded values are set on the defaults
(``config/defaults.py``), so keys added to hetreg_jax after the run keep their defaults; its lists
become tuples again.
"""

from __future__ import annotations

import json
import os

import ml_collections
from hetreg_jax.base.errors import InputError, MissingFileError
from hetreg_jax.base.workdir import flatten
from hetreg_jax.config import defaults as default_config


def _tuples(value):
    if isinstance(value, dict):
        return {k: _tuples(v) for k, v in value.items()}
    if isinstance(value, list):
        return tuple(_tuples(v) for v in value)
    return value


def config_from_json(path: str) -> ml_collections.ConfigDict:
    """The config recorded in ``path`` (a run's ``config.json``); one-line errors for a missing or
    unreadable file."""
    path = os.path.abspath(os.path.expanduser(path))
    try:
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
    except FileNotFoundError:
        raise MissingFileError(f"{path}: no such config file (a run's config.json, or configs/*.py)") from None
    except (OSError, json.JSONDecodeError) as exc:
        raise InputError(f"{path}: not a readable JSON config ({exc})") from None
    if not isinstance(data, dict):
        raise InputError(f"{path}: not a config (a JSON object is expected)")
    config = default_config.get_config()  # keys added since the run was recorded keep their defaults
    for key, value in flatten(data).items():
        *parents, leaf = key.split(".")
        target = config
        for part in parents:
            if part not in target:
                raise InputError(f"{path}: unknown config key {key!r}")
            target = target[part]
        if leaf not in target:
            raise InputError(f"{path}: unknown config key {key!r}")
        target[leaf] = _tuples(value)
    return config


def get_config(path: str) -> ml_collections.ConfigDict:
    """``ml_collections.config_flags`` entry point: ``--config=<this file>:<path to config.json>``."""
    return config_from_json(path)
