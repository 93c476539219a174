"""The ``hetreg`` console script: ``pip install .`` in a fresh virtual environment gives a command
with main.py's modes, and the bundled configs are reachable by name from any folder."""

import json
import os
import shutil
import subprocess
import sys

import pytest

from hetreg_jax import configs
from hetreg_jax.cli import checks as cli

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_bundled_config_names_resolve_and_paths_still_work():
    argv = cli.bundled_config_argv(["hetreg", "--config=acdc", "--config.num_steps=3"])
    assert argv[1] == f"--config={os.path.join(configs.FOLDER, 'acdc.py')}" and argv[2] == "--config.num_steps=3"
    assert cli.bundled_config_argv(["hetreg", "--config", "quick"])[2] == os.path.join(configs.FOLDER, "quick.py")
    assert cli.bundled_config_argv(["x", "--config=configs/acdc.py"]) == ["x", "--config=configs/acdc.py"]
    assert cli.bundled_config_argv(["x", "--config=nonexist"]) == ["x", "--config=nonexist"]
    # the repository's thin configs/*.py and the package's give the same config
    from configs import acdc as repo_acdc
    from hetreg_jax.configs import acdc as package_acdc
    assert repo_acdc.get_config().to_dict() == package_acdc.get_config().to_dict()
    assert package_acdc.get_config().data.image_size == (128, 128)


def _offline_build_backend() -> bool:
    """Whether pyproject.toml's build backend can build a wheel from the installed packages: a
    setuptools >= 70.1 (bdist_wheel built in), or an older one with the wheel package."""
    import importlib.metadata
    import importlib.util

    try:
        version = tuple(int(part) for part in importlib.metadata.version("setuptools").split(".")[:2])
    except (importlib.metadata.PackageNotFoundError, ValueError):
        return False
    return version >= (70, 1) or importlib.util.find_spec("wheel") is not None


def test_pip_install_gives_a_hetreg_command(tmp_path):
    """A venv on the system's packages (offline: --no-deps --no-build-isolation), the project copied
    so the build leaves the checkout as it is; the command runs from another folder."""
    src = tmp_path / "src"
    src.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(os.path.join(REPO, name), src / name)
    shutil.copytree(os.path.join(REPO, "hetreg_jax"), src / "hetreg_jax",
                    ignore=shutil.ignore_patterns("__pycache__"))
    venv = tmp_path / "venv"
    # --without-pip: this interpreter's pip installs into the venv (pip --python), so the venv is made
    # without bootstrapping a pip of its own (ensurepip: most of the time venv takes)
    made = subprocess.run([sys.executable, "-m", "venv", "--system-site-packages", "--without-pip", str(venv)],
                          capture_output=True, text=True, timeout=120)
    if made.returncode != 0:
        pytest.skip(f"cannot make a venv: {made.stderr.strip()[-200:]}")
    python = venv / "bin" / "python"
    # The venv sees this interpreter's packages (jax, ...) too: in CI those live in another venv,
    # not in the system's site-packages that --system-site-packages adds.
    import site
    inner = subprocess.run([str(python), "-c", "import site; print(site.getsitepackages()[0])"],
                           capture_output=True, text=True, timeout=60).stdout.strip()
    with open(os.path.join(inner, "_outer_packages.pth"), "w", encoding="utf-8") as f:
        f.write("\n".join(site.getsitepackages()) + "\n")
    install = [sys.executable, "-m", "pip", "--python", str(python), "install", "--no-deps", "-q", str(src)]
    pip = None
    if _offline_build_backend():  # builds with the packages at hand: no download, no isolated build env
        pip = subprocess.run(install[:7] + ["--no-build-isolation", "--no-index"] + install[7:],
                             capture_output=True, text=True, timeout=300)
    if pip is None or pip.returncode != 0:  # e.g. a setuptools < 70.1 without the wheel package: fetch it
        pip = subprocess.run(install, capture_output=True, text=True, timeout=600)
    if pip.returncode != 0:
        pytest.skip(f"pip install failed (no network for the build backend?): {pip.stderr.strip()[-300:]}")
    hetreg = venv / "bin" / "hetreg"
    assert hetreg.is_file()
    env = dict(os.environ, JAX_PLATFORMS="cpu")
    env.pop("PYTHONPATH", None)
    work = tmp_path / "elsewhere"
    work.mkdir()
    helped = subprocess.run([str(hetreg), "--help"], cwd=work, env=env, capture_output=True, text=True, timeout=120)
    assert helped.returncode == 0, helped.stderr[-2000:]
    assert "--mode" in helped.stdout and "register" in helped.stdout and "--[no]resample_moving" in helped.stdout
    where = subprocess.run([str(python), "-c", "import hetreg_jax; print(hetreg_jax.__file__)"], cwd=work, env=env,
                           capture_output=True, text=True, timeout=120)
    assert where.stdout.strip().startswith(str(venv))  # the installed copy, not the checkout
    run = subprocess.run([str(hetreg), "--config=quick", "--mode=inspect", f"--workdir={work / 'w'}",
                          "--config.data.synthetic_subjects=3", "--config.data.image_size=(32,32)"],
                         cwd=work, env=env, capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-2000:]
    summary = json.load(open(work / "w" / "data_summary.json"))
    assert summary["image_shape"] == [32, 32] and summary["splits"]["train"]["patients"] == 1
    bad = subprocess.run([str(hetreg), "--config=nonexist", f"--workdir={work / 'x'}"], cwd=work, env=env,
                         capture_output=True, text=True, timeout=120)
    assert bad.returncode == 2 and bad.stderr.strip().splitlines()[-1] == "error: --config=nonexist: no such file"
