"""The command line's checks and messages: what ``main.py`` verifies before any work, and how an
error becomes the one line it prints."""

from __future__ import annotations

import os
import re

from hetreg_jax import configs
from hetreg_jax.base import workdir as workdir_lib
from hetreg_jax.base.errors import InputError
from hetreg_jax.config import json_config
from hetreg_jax.config.check import validate_config


def check_inputs(config, mode: str, workdir: str, out: str | None = None, moving: str | None = None,
                 fixed: str | None = None, moving_label: str | None = None, fixed_label: str | None = None) -> None:
    """Everything that can be checked before the devices are set up or a file is written: the
    config's values, the flags the mode needs, and that the output folders can be written."""
    if config is None:
        hint = (f" (or a workdir with a recorded config.json: none in {os.path.abspath(workdir)})"
                if mode in RECORDED_CONFIG_MODES else "")
        raise InputError(f"--mode={mode} needs --config=configs/<name>.py{hint}")
    validate_config(config)
    if mode == "register" and config.method == "elastix":
        raise InputError("--mode=register registers with a trained network; method='elastix' has none "
                         "(in Python: hetreg_jax.baselines.elastix.register_pair(moving, fixed, config))")
    if mode in ("train", "inspect"):
        workdir_lib.check_writable(workdir)
    elif os.path.exists(workdir) and not os.path.isdir(workdir):
        raise InputError(f"--workdir {os.path.abspath(workdir)} is not a folder")
    if mode == "register":
        if not (moving and fixed and out):
            raise InputError("--mode=register needs --moving, --fixed and --out")
        if fixed_label and not moving_label:
            raise InputError("--fixed_label needs --moving_label (the label that is warped and scored)")
        workdir_lib.check_writable(out, "--out")
    if mode == "eval" and out:
        workdir_lib.check_writable(out, "--out")
    elif mode == "eval" and os.path.isdir(os.path.join(workdir, "checkpoints")):
        try:
            workdir_lib.check_writable(os.path.join(workdir, "eval"))
        except InputError as exc:
            raise InputError(f"{exc}; write the report elsewhere with --out=DIR") from None


def one_line(exc: BaseException) -> str:
    """The message of ``exc`` on one line: an OSError as 'path: reason', a config file's traceback
    reduced to its last line, a quoted KeyError unquoted."""
    text = str(exc).replace("\\n", "\n")
    if isinstance(exc, OSError) and exc.strerror and not isinstance(exc.args[0], str):
        text = f"{exc.filename}: {exc.strerror}" if exc.filename else exc.strerror
    if "Traceback (most recent call last)" in text:  # a config file that failed to load
        head, _, tail = text.partition("Traceback (most recent call last)")
        text = f"{head.strip().rstrip(':')}: {[line for line in tail.splitlines() if line.strip()][-1]}"
    text = " ".join(text.split())
    if len(text) > 1 and text[0] == text[-1] and text[0] in "'\"":
        text = text[1:-1]
    return text.replace("\\'", "'").replace('\\"', '"')


def unknown_override(argv, exc: BaseException) -> str | None:
    """The one-line message for a ``--config.KEY=VALUE`` whose KEY names no config field, which
    ml_collections reports as a ``KeyError`` or ``AttributeError`` with the quoted field first;
    None if ``exc`` is not about a field of an override on the command line."""
    if not isinstance(exc, (KeyError, AttributeError)):
        return None
    match = re.match(r"'?([^'\s]+)'?\s*(.*)", one_line(exc))
    if not match:
        return None
    field, hint = match.groups()
    for arg in argv:
        key = arg.split("=", 1)[0].removeprefix("--config.")
        if arg.startswith("--config.") and field in key.split("."):
            return f"--config.{key}: no config key {field!r}" + (f"; {hint}" if hint else "")
    return None


JSON_LOADER = os.path.abspath(json_config.__file__)
RECORDED_CONFIG_MODES = ("eval", "register")


def _flag_value(argv, name: str) -> str | None:
    value = None
    for i, arg in enumerate(argv):
        if arg.startswith(f"--{name}="):
            value = arg.split("=", 1)[1]
        elif arg == f"--{name}" and i + 1 < len(argv):
            value = argv[i + 1]
    return value


def bundled_config_argv(argv: list[str]) -> list[str]:
    """``--config=NAME`` (no such file, and NAME a bundled config: ``hetreg_jax.configs.NAMES``)
    rewritten to that config's file in the package, so ``hetreg --config=acdc`` works anywhere."""
    out, argv = [], list(argv)
    for i, arg in enumerate(argv):
        if arg.startswith("--config="):
            value = arg.split("=", 1)[1]
            name, sep, rest = value.partition(":")
            if not os.path.exists(name) and configs.path(name):
                arg = f"--config={configs.path(name)}{sep}{rest}"
        elif i > 0 and argv[i - 1] == "--config" and not os.path.exists(arg.partition(":")[0]) \
                and configs.path(arg.partition(":")[0]):
            name, sep, rest = arg.partition(":")
            arg = f"{configs.path(name)}{sep}{rest}"
        out.append(arg)
    return out


def config_argv(argv: list[str]) -> list[str]:
    """The command line with its config made loadable: a ``--config=...json`` (a run's recorded
    config) goes through ``json_config.py``; with no ``--config``, ``--mode=eval|register`` use
    ``WORKDIR/config.json`` when it exists. Overrides (``--config.key=value``) apply either way."""
    argv = bundled_config_argv(argv)
    config = _flag_value(argv, "config")
    if config is None:
        workdir, mode = _flag_value(argv, "workdir"), _flag_value(argv, "mode")
        recorded = os.path.join(workdir, "config.json") if workdir else None
        if mode in RECORDED_CONFIG_MODES and recorded and os.path.isfile(recorded):
            return [argv[0], f"--config={JSON_LOADER}:{os.path.abspath(recorded)}", *argv[1:]]
        return list(argv)
    if config.split(":", 1)[0].endswith(".json"):
        if not os.path.isfile(config):
            return list(argv)  # reported by config_file_error
        out, skip = [], False
        for arg in argv:
            if skip:
                skip = False
                continue
            if arg == "--config":
                skip = True
                arg = f"--config={config}"
            if arg.startswith("--config="):
                arg = f"--config={JSON_LOADER}:{os.path.abspath(config)}"
            out.append(arg)
        return out
    return list(argv)


def config_file_error(argv) -> str | None:
    """A one-line error if the --config file does not exist (ml_collections reports it in ~30 lines)."""
    path = _flag_value(argv, "config")
    if path is None:
        return None
    path = path.split(":", 1)[0]
    if not os.path.isfile(path):
        return f"--config={path}: no such file"
    return None
