"""The configuration reference, read from ``defaults.py``: every key with its default and its comment.

``defaults.get_config`` documents each field by the comment at the end of its line, continued on
the comment-only lines right below it; a sub-config (``c.loss = ConfigDict()``) is introduced by the
comment on its own line. `fields` reads them from the source (``ast`` for the assignments,
``tokenize`` for the comments), `markdown` renders the tables of the documentation's
configuration page (``docs/configuration.md``, filled in by ``docs/hooks/config_page.py`` when the
site is built), so the page cannot drift from the defaults. ``python -m hetreg_jax.config.reference``
prints it.
"""

from __future__ import annotations

import ast
import dataclasses
import inspect
import io
import tokenize

import ml_collections

from hetreg_jax.config import defaults


@dataclasses.dataclass(frozen=True)
class Field:
    key: str            # dotted, e.g. "loss.gamma"
    default: object     # the value of defaults.get_config()
    comment: str        # the comment of its line and the comment-only lines that continue it
    section: str        # "" for the top level, else the sub-config ("loss")


def _comments(source: str) -> dict[int, tuple[str, bool]]:
    """Line number -> (comment text, whether the line holds nothing but the comment)."""
    out = {}
    for tok in tokenize.generate_tokens(io.StringIO(source).readline):
        if tok.type == tokenize.COMMENT:
            alone = tok.line[: tok.start[1]].strip() == ""
            out[tok.start[0]] = (tok.string[1:].strip(), alone)
    return out


def _dotted(target: ast.expr) -> str | None:
    """'loss.gamma' for the assignment target ``c.loss.gamma`` (None for anything else)."""
    names = []
    while isinstance(target, ast.Attribute):
        names.append(target.attr)
        target = target.value
    if isinstance(target, ast.Name) and target.id == "c" and names:
        return ".".join(reversed(names))
    return None


def _value(config: ml_collections.ConfigDict, key: str):
    for part in key.split("."):
        config = config[part]
    return config


def fields() -> tuple[list[Field], dict[str, str]]:
    """Every leaf key of the defaults in source order, and each sub-config's introduction."""
    source = inspect.getsource(defaults.get_config)
    comments = _comments(source)
    config = defaults.get_config()
    out, sections = [], {}
    (function,) = ast.parse(source).body
    for node in function.body:                                  # the assignments, in source order
        if not isinstance(node, ast.Assign) or len(node.targets) != 1:
            continue
        key = _dotted(node.targets[0])
        if key is None:
            continue
        text, line = [], node.end_lineno
        if line in comments and not comments[line][1]:
            text.append(comments[line][0])
        line += 1
        more = []
        while line in comments and comments[line][1]:        # continuation lines
            more.append(comments[line][0])
            line += 1
        if more:
            text.append(" ".join(more))
        comment = ""
        for part in text:        # a continuation reads as a new clause unless the line ended with ':'
            comment += part if not comment else (" " if comment.endswith(":") else "; ") + part
        value = _value(config, key)
        if isinstance(value, ml_collections.ConfigDict):
            sections[key] = comment
            continue
        out.append(Field(key, value, comment, key.rpartition(".")[0]))
    return out, sections


def _show(value) -> str:
    if value is None:
        return "None"
    if isinstance(value, str):
        return f'"{value}"'
    if isinstance(value, float):
        return repr(value)
    if isinstance(value, (tuple, list)):
        return "(" + ", ".join(_show(v) for v in value) + ("," if len(value) == 1 else "") + ")"
    return repr(value)


def _cell(text: str) -> str:
    return text.replace("|", "\\|")


def markdown() -> str:
    """The configuration reference as Markdown: one table per sub-config, in the defaults' order."""
    items, sections = fields()
    order = [""] + [s for s in dict.fromkeys(f.section for f in items) if s]
    blocks = []
    for section in order:
        rows = [f for f in items if f.section == section]
        title = "Top level" if not section else f"`{section}.*`"
        intro = sections.get(section, "")
        lines = [f"### {title}", ""]
        if intro:
            lines += [_cell(intro[:1].upper() + intro[1:]) + ".", ""]
        lines += ["| key | default | meaning |", "|---|---|---|"]
        lines += [f"| `{f.key}` | `{_cell(_show(f.default))}` | {_cell(f.comment)} |" for f in rows]
        blocks.append("\n".join(lines))
    return "\n\n".join(blocks) + "\n"


if __name__ == "__main__":
    print(markdown(), end="")
