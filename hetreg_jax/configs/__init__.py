"""The bundled configs, reachable by name: ``hetreg --config=acdc`` is this folder's ``acdc.py``
(``cli.config_argv`` resolves a name that is not a file). ``configs/*.py`` at the repository root
re-export them, so ``python main.py --config=configs/acdc.py`` keeps working."""

import os

NAMES = ("default", "acdc", "camus", "echo3d", "quick")
FOLDER = os.path.dirname(os.path.abspath(__file__))


def path(name: str) -> str | None:
    """The file of the bundled config ``name`` (``"acdc"`` or ``"acdc.py"``), or None."""
    stem = name[:-3] if name.endswith(".py") else name
    return os.path.join(FOLDER, f"{stem}.py") if stem in NAMES else None
