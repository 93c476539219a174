"""The command line's checks and messages: what ``main.py`` verifies before any work, and how an
error becomes the one line it prints."""

from __future__ import annotations

import os

from hetreg_jax import workdir as workdir_lib
from hetreg_jax.config_check import validate_config


def check_inputs(config, mode: str, workdir: str, out: str | None = None, moving: str | None = None,
                 fixed: str | None = None) -> None:
    """Everything that can be checked before the devices are set up or a file is written: the
    config's values, the flags the mode needs, and that the output folders can be written."""
    validate_config(config)
    if mode in ("train", "inspect"):
        workdir_lib.check_writable(workdir)
    elif os.path.exists(workdir) and not os.path.isdir(workdir):
        raise ValueError(f"--workdir {os.path.abspath(workdir)} is not a folder")
    if mode == "register":
        if not (moving and fixed and out):
            raise ValueError("--mode=register needs --moving, --fixed and --out")
        workdir_lib.check_writable(out, "--out")
    if mode == "eval" and out:
        workdir_lib.check_writable(out, "--out")
    elif mode == "eval" and os.path.isdir(os.path.join(workdir, "checkpoints")):
        try:
            workdir_lib.check_writable(os.path.join(workdir, "eval"))
        except ValueError as exc:
            raise ValueError(f"{exc}; write the report elsewhere with --out=DIR") from None


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


def config_file_error(argv) -> str | None:
    """A one-line error if the --config file does not exist (ml_collections reports it in ~30 lines)."""
    for i, arg in enumerate(argv):
        if arg.startswith("--config="):
            path = arg.split("=", 1)[1]
        elif arg == "--config" and i + 1 < len(argv):
            path = argv[i + 1]
        else:
            continue
        path = path.split(":", 1)[0]
        if not os.path.isfile(path):
            return f"--config={path}: no such file"
    return None
