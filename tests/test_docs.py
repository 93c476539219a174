"""The documentation stays true to the code: the configuration page lists every config key and
nothing else, every relative link of the README and the docs leads to a file (and heading) that
exists, every `--config.KEY` a command shows is a real key, every page is in the site's navigation,
and the public Sunnybrook fixture the tutorial uses loads as documented. (The strict site build
itself runs in CI: `mkdocs build --strict`, see .ci/run.)"""

import pathlib
import re

import unicodedata

import numpy as np
import pytest

from hetreg_jax.config import defaults, reference

ROOT = pathlib.Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"
PAGES = sorted(p for p in DOCS.rglob("*.md"))
ALL_MARKDOWN = [ROOT / "README.md", ROOT / "examples" / "sunnybrook" / "README.md"] + PAGES


def leaf_keys(config, prefix=""):
    out = set()
    for key, value in config.items():
        if hasattr(value, "items"):
            out |= leaf_keys(value, f"{prefix}{key}.")
        else:
            out.add(prefix + key)
    return out


def test_configuration_page_lists_every_key_and_nothing_else():
    page = reference.markdown()
    listed = re.findall(r"^\| `([\w.]+)` \|", page, flags=re.M)
    keys = leaf_keys(defaults.get_config())
    assert len(listed) == len(set(listed)), "a key is listed twice"
    assert set(listed) == keys
    for field in reference.fields()[0]:
        assert field.comment, f"{field.key} has no comment in defaults.py"
    # the page is filled in at build time: the marker and the hook must be in place
    assert "<!-- config-reference -->" in (DOCS / "configuration.md").read_text(encoding="utf-8")
    assert "docs/hooks/config_page.py" in (ROOT / "mkdocs.yml").read_text(encoding="utf-8")


def test_reference_reads_defaults_and_continuation_comments():
    fields = {f.key: f for f in reference.fields()[0]}
    assert fields["loss.gamma"].default == 0.5 and fields["loss.gamma"].section == "loss"
    assert fields["data.root"].default is None
    # the motion schedule's comment continues on the next line, joined after its colon
    assert fields["optim.motion_schedule"].comment.endswith("poly for TransMorph (the reference's), constant for VoxelMorph")
    assert "`unrolled`" in fields["steps_per_call_form"].comment
    assert reference.fields()[1]["elastix"].startswith('method="elastix"')
    page = reference.markdown()
    assert '| `model` | `"voxelmorph"` |' in page and "| `motion.enc_features` | `(16, 32, 32, 32)` |" in page
    assert "| `transmorph.window_size` | `(0,)` |" in page


def slugify(text: str) -> str:
    """A heading's anchor as Python-Markdown's toc extension (MkDocs' default) makes it."""
    text = unicodedata.normalize("NFKD", text).encode("ascii", "ignore").decode("ascii")
    text = re.sub(r"[^\w\s-]", "", text).strip().lower()
    return re.sub(r"[-\s]+", "-", text)


def headings(path: pathlib.Path) -> set[str]:
    text, fence, out = path.read_text(encoding="utf-8").splitlines(), False, set()
    for line in text:
        if line.startswith("```"):
            fence = not fence
        elif not fence and (m := re.match(r"^#{1,6} (.*)$", line)):
            out.add(slugify(re.sub(r"<[^>]+>", "", m.group(1))))
    return out


def links(path: pathlib.Path):
    text = re.sub(r"```.*?```", "", path.read_text(encoding="utf-8"), flags=re.S)
    text = re.sub(r"`[^`\n]*`", "", text)
    return re.findall(r"\]\(([^)\s]+)\)", text)


@pytest.mark.parametrize("path", ALL_MARKDOWN, ids=lambda p: str(p.relative_to(ROOT)))
def test_relative_links_resolve(path):
    for target in links(path):
        if re.match(r"^[a-z]+:", target):
            continue
        file, _, anchor = target.partition("#")
        dest = (path.parent / file).resolve() if file else path
        assert dest.exists(), f"{path.name}: link to missing {target}"
        if anchor and dest.suffix == ".md":
            if dest == ROOT / "README.md" or path == ROOT / "README.md" and dest == path:
                continue  # GitHub's anchors of the README itself
            assert anchor in headings(dest), f"{path.name}: {target}: no such heading"


def test_readme_is_a_short_front_door():
    lines = (ROOT / "README.md").read_text(encoding="utf-8").splitlines()
    assert len(lines) <= 200, len(lines)


def test_every_page_is_in_the_navigation():
    nav = (ROOT / "mkdocs.yml").read_text(encoding="utf-8")
    listed = set(re.findall(r":\s+([\w/.-]+\.md)\s*$", nav, flags=re.M))
    assert {str(p.relative_to(DOCS)) for p in PAGES} == listed


def test_commands_shown_use_real_config_keys_and_files():
    keys = leaf_keys(defaults.get_config())
    sections = {k.split(".")[0] for k in keys if "." in k}
    for path in ALL_MARKDOWN:
        text = path.read_text(encoding="utf-8")
        for key in re.findall(r"--config\.([a-z][\w.]*)=", text):
            assert key in keys, f"{path.name}: --config.{key} is not a config key"
        for key in re.findall(r"`((?:%s)\.\w+)`" % "|".join(sections), text):
            assert key in keys or key.split(".")[1] in ("py",), f"{path.name}: `{key}` is not a config key"
        for name in re.findall(r"\bconfigs/(\w+)\.py", text):
            if name == "nonexist":      # the missing-file example of the troubleshooting table
                continue
            assert (ROOT / "configs" / f"{name}.py").exists(), f"{path.name}: configs/{name}.py"
        for name in re.findall(r"python -m (hetreg_jax[\w.]*)", text):
            module = ROOT / name.replace(".", "/")
            assert module.with_suffix(".py").exists() or (module / "__main__.py").exists(), name
        for name in re.findall(r"\bexamples/sunnybrook/([\w/]+\.nii\.gz)", text):
            assert (ROOT / "examples" / "sunnybrook" / name).exists(), f"{path.name}: {name}"


def test_sunnybrook_fixture_loads_as_documented():
    """Five real studies, three slices each, slice by slice at the tutorial's 96² crop; the LV
    cavity is labelled in both frames, the myocardium at ED only; real spacing from the files."""
    from hetreg_jax.data import pipeline

    config = defaults.get_config()
    config.data.root = str(ROOT / "examples" / "sunnybrook")
    config.data.structures = "lv=1,myo=2"
    config.data.image_size = (96, 96)
    splits, info = pipeline.load_dataset(config)
    assert info["layout"] == "pairs" and info["skipped"] == []
    counts = {name: len(split["moving"]) for name, split in splits.items()}
    assert counts == {"train": 9, "val": 3, "test": 3}
    test = splits["test"]
    assert test["moving"].shape == (3, 96, 96, 1)
    assert float(test["moving"].min()) == 0.0 and float(test["moving"].max()) == 1.0
    assert all(1.28 < s[0] < 1.38 and 1.28 < s[1] < 1.38 for s in np.asarray(test["spacing"]))
    assert set(np.unique(test["moving_label"])) == {0, 1, 2}
    assert set(np.unique(test["fixed_label"])) == {0, 1}


COMMANDS = {  # a command line as the docs show it -> the modules that define its flags
    r"(?:python3? main\.py|^\s*hetreg)\b": ["hetreg_jax/cli/command.py"],
    r"python -m hetreg_jax\.bench\b": ["hetreg_jax/cli/bench.py", "hetreg_jax/cli/bench_sweep.py"],
    r"python -m hetreg_jax\.experiments\b": ["hetreg_jax/experiments/runner.py"],
    r"python -m hetreg_jax\.compare\b": ["hetreg_jax/evaluate/compare.py"],
}
ABSL = {"help", "helpfull", "verbosity", "v", "logtostderr", "alsologtostderr"}


def command_lines(path: pathlib.Path):
    """The shell lines of a page's code blocks, continuation lines joined."""
    text = path.read_text(encoding="utf-8")
    for block in re.findall(r"```(?:bash|sh)?\n(.*?)```", text, flags=re.S):
        yield from block.replace("\\\n", " ").splitlines()


def test_flags_shown_in_commands_exist():
    defined = {}
    for pattern, files in COMMANDS.items():
        names = set(ABSL)
        for file in files:
            names |= set(re.findall(r"DEFINE_\w+\(\s*\"(\w+)\"", (ROOT / file).read_text(encoding="utf-8")))
        defined[pattern] = names
    checked = 0
    for path in ALL_MARKDOWN:
        for line in command_lines(path):
            for pattern, names in defined.items():
                for command in re.split(r"(?=%s)" % pattern, line)[1:]:
                    command = re.split(r"\s#\s", command)[0]              # drop a trailing comment
                    for flag in re.findall(r"(?<![\w-])--(\w+)(?![\w.])", command):
                        assert flag in names or flag.startswith("no") and flag[2:] in names, f"{path.name}: {command.strip()[:80]}: no flag --{flag}"
                        checked += 1
    assert checked > 100
