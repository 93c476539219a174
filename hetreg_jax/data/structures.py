"""Label conventions: which label value of a dataset's label maps is which anatomical structure.

A convention is written ``"name=label,..."`` (``config.data.structures``), e.g. ACDC's
``"rv=1,myo=2,lv=3"``; names are lower-case words (``myo`` is the myocardium, the paper's headline
structure; ``lv``/``rv`` the ventricular cavities, ``la`` the left atrium), labels 1-255. ``"auto"``
takes the convention of the dataset's layout or phantom kind (`CONVENTIONS`).
"""

from __future__ import annotations

import re

from hetreg_jax.base.errors import InputError

CONVENTIONS = {"acdc": "rv=1,myo=2,lv=3", "camus": "lv=1,myo=2,la=3", "echo3d": "lv=1,myo=2,la=3",
               "pairs": "myo=2"}
NAMES = {"myo": "myocardium", "lv": "LV cavity", "rv": "RV cavity", "la": "left atrium"}
_NAME = re.compile(r"^[a-z][a-z0-9]*$")


def parse(text: str) -> list[tuple[str, int]]:
    """``"rv=1,myo=2,lv=3"`` -> ``[("myo", 2), ("rv", 1), ("lv", 3)]`` (the myocardium first, the
    others in the given order); one-line ``InputError`` naming ``config.data.structures``."""
    out: list[tuple[str, int]] = []
    for item in str(text).split(","):
        name, sep, value = item.strip().partition("=")
        name = name.strip()
        if not sep or not _NAME.match(name) or not value.strip().isdigit() or not 1 <= int(value) <= 255:
            raise InputError(f"config.data.structures={text!r}: expected 'name=label,...' with lower-case names "
                             "and labels 1-255, e.g. 'rv=1,myo=2,lv=3'")
        out.append((name, int(value)))
    names, values = [n for n, _ in out], [v for _, v in out]
    if len(set(names)) < len(names) or len(set(values)) < len(values):
        raise InputError(f"config.data.structures={text!r}: a name or a label appears twice")
    return sorted(out, key=lambda nv: nv[0] != "myo")


def resolve(text: str, kind: str) -> list[tuple[str, int]]:
    """The ``(name, label)`` structures of ``config.data.structures`` = ``text``; ``"auto"`` takes
    the convention of ``kind`` (a layout, ``acdc``/``camus``/``pairs``, or a phantom kind)."""
    return parse(CONVENTIONS.get(kind, CONVENTIONS["pairs"]) if text == "auto" else text)
