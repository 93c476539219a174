"""MkDocs hook: the configuration page's tables are generated from hetreg_jax/config/defaults.py.

``docs/configuration.md`` holds the marker below; at build time it is replaced by
``hetreg_jax.config.reference.markdown()``, so the page lists exactly the keys of the defaults with
the comments written next to them.
"""

import pathlib
import sys

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[2]))   # the repository, uninstalled

from hetreg_jax.config import reference  # noqa: E402

MARKER = "<!-- config-reference -->"


def on_page_markdown(markdown, page, config, files):
    if page.file.src_uri != "configuration.md":
        return markdown
    if MARKER not in markdown:
        raise ValueError(f"docs/configuration.md lost its marker {MARKER}")
    return markdown.replace(MARKER, reference.markdown())
