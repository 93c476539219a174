"""The project's error types (hetreg_jax/base/errors.py) and what the command lines make of them: a
user's error (the project's types, an OSError) in one line, anything else with its traceback."""

import os
import subprocess
import sys

import pytest

from cli_support import ROOT, error_line
from hetreg_jax.base import errors
from hetreg_jax.base.interrupt import Interrupted
from hetreg_jax.base.workdir import ConfigMismatch, WorkdirLocked
from hetreg_jax.cli import checks as cli_checks
from hetreg_jax.data.nifti import DataError
from hetreg_jax.train.checkpoint import NoSpace

# each error type -> the builtins it must still be (so existing ``except`` clauses keep catching it)
BUILTINS = {
    errors.InputError: (ValueError,),
    errors.MissingFileError: (FileNotFoundError, OSError),
    errors.NonFiniteError: (FloatingPointError, ArithmeticError),
    DataError: (ValueError,),
    WorkdirLocked: (RuntimeError, ValueError),
    ConfigMismatch: (ValueError,),
    NoSpace: (OSError,),
}
SAMPLES = {
    errors.InputError: lambda: errors.InputError("config.num_steps=0 is not allowed"),
    errors.MissingFileError: lambda: errors.MissingFileError("no checkpoint in w/checkpoints"),
    errors.NonFiniteError: lambda: errors.NonFiniteError("non-finite loss at step 3"),
    DataError: lambda: DataError("root/p1.nii.gz", "file not found"),
    WorkdirLocked: lambda: WorkdirLocked("workdir w is in use by another process"),
    ConfigMismatch: lambda: ConfigMismatch("w was started with a different config", {"seed": (0, 1)}),
    NoSpace: lambda: NoSpace("no space left on the device"),
}


@pytest.mark.parametrize("cls", list(BUILTINS), ids=lambda c: c.__name__)
def test_every_error_type_is_a_hetreg_error_and_its_builtin(cls):
    error = SAMPLES[cls]()
    assert isinstance(error, errors.HetregError) and isinstance(error, errors.ONE_LINE_ERRORS)
    for builtin in BUILTINS[cls]:
        assert isinstance(error, builtin), builtin
        with pytest.raises(builtin):
            raise error
    assert "\n" not in str(error) and str(error)


def test_a_stop_request_is_no_error():
    """Ctrl-C and SIGTERM keep their own report and exit status (130), apart from the errors."""
    assert not isinstance(Interrupted(3, None, "w"), errors.ONE_LINE_ERRORS)


# main.py with the first thing it calls (cli.check_inputs) replaced by one that raises.
DRIVER = """
import sys
from hetreg_jax.base import errors
from hetreg_jax.cli import command

def check_inputs(*args, **kwargs):
    raise {raise_}

command.cli.check_inputs = check_inputs
command.entry()
"""
# what check_inputs raises -> the one line main.py prints (None: a programming error, with its traceback).
# The project's own errors through main.py: tests/test_reliability.py (bad config values, a mistyped
# key, no checkpoint, ...), tests/test_datasets.py (a missing data file), tests/test_failures.py.
RAISED = {
    "PermissionError": ('PermissionError(13, "Permission denied", "/w/.lock")', "error: /w/.lock: Permission denied"),
    "TypeError": ('TypeError("unsupported operand type(s)")', None),
    "ValueError": ('ValueError("operands could not be broadcast together")', None),
}


@pytest.mark.parametrize("case", list(RAISED))
def test_main_prints_user_errors_in_one_line_and_programming_errors_with_their_traceback(cli, tmp_path, case):
    raise_, line = RAISED[case]
    proc = subprocess.run([sys.executable, "-c", DRIVER.format(raise_=raise_), f"--config={cli.config}",
                           f"--workdir={tmp_path / 'w'}"], cwd=ROOT, env=cli.env, text=True,
                          capture_output=True, timeout=300)
    assert proc.returncode == 1, proc.stderr[-3000:]
    if line is not None:
        assert error_line(proc) == line
        assert "Traceback" not in proc.stderr
    else:
        assert "Traceback (most recent call last)" in proc.stderr
        assert proc.stderr.strip().splitlines()[-1].startswith(f"{case}: ")
        assert "error: " not in proc.stderr
    assert not os.path.exists(tmp_path / "w")


def test_a_mistyped_override_key_is_named_and_other_key_errors_are_not():
    """ml_collections reports ``--config.data.nmu.x=3`` as a KeyError or AttributeError naming 'nmu'
    (main.py's one line for it: tests/test_reliability.py); a KeyError about anything else is a bug."""
    argv = ["--config=c.py", "--config.data.nmu.x=3", "--workdir=w"]
    assert cli_checks.unknown_override(argv, KeyError("'nmu'")) == "--config.data.nmu.x: no config key 'nmu'"
    assert cli_checks.unknown_override(argv, AttributeError(KeyError("'nmu'"))) == \
        "--config.data.nmu.x: no config key 'nmu'"
    hint = KeyError("'nmu'\nDid you mean \"num\" instead of \"nmu\"?")
    assert cli_checks.unknown_override(argv, hint).endswith("""'nmu'; Did you mean "num" instead of "nmu"?""")
    assert cli_checks.unknown_override(argv, KeyError("motion_params")) is None
    assert cli_checks.unknown_override(argv, TypeError("'nmu'")) is None


def test_an_error_in_a_config_files_own_code_keeps_its_traceback(cli, tmp_path):
    config = tmp_path / "broken.py"
    config.write_text("def get_config():\n    return {}['num_steps']\n")
    proc = subprocess.run([sys.executable, "main.py", f"--config={config}", f"--workdir={tmp_path / 'w'}"],
                          cwd=ROOT, env=cli.env, text=True, capture_output=True, timeout=300)
    assert proc.returncode == 1
    assert "Traceback (most recent call last)" in proc.stderr and "broken.py" in proc.stderr
    assert proc.stderr.strip().splitlines()[-1] == "KeyError: 'num_steps'"
