"""The package's layers (docs/api/index.md, "Package layout"): every module imports only modules of its own
layer or of layers below it, the imports have no cycle, and no module imports hetreg_jax inside a
function. Read from the source (ast): nothing is imported."""

import ast
import pathlib

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "hetreg_jax"

# Bottom to top; a module's layer is that of the longest entry that is its name or a package above it.
LAYERS = [
    ["hetreg_jax.base"],
    ["hetreg_jax.core"],
    ["hetreg_jax.models"],
    ["hetreg_jax.data"],
    ["hetreg_jax.config", "hetreg_jax.configs"],
    ["hetreg_jax.evaluate"],
    ["hetreg_jax.baselines"],
    ["hetreg_jax.train"],
    ["hetreg_jax.register"],
    ["hetreg_jax.api"],
    ["hetreg_jax.experiments"],
    ["hetreg_jax.cli"],
    # the command lines' thin modules (python -m hetreg_jax.bench / .compare) and the package itself
    ["hetreg_jax.bench", "hetreg_jax.compare", "hetreg_jax"],
]
# hetreg_jax.__init__ gives hetreg_jax.load / hetreg_jax.Model on first use (PEP 562 __getattr__), so
# that importing any submodule stays light: the one import made inside a function.
LAZY = {("hetreg_jax", "hetreg_jax.api")}


def module_files(package: pathlib.Path) -> dict[str, pathlib.Path]:
    out = {}
    for path in sorted(package.rglob("*.py")):
        parts = list(path.relative_to(package.parent).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        out[".".join(parts)] = path
    return out


def imports_of(name: str, path: pathlib.Path, modules) -> list[tuple[str, bool]]:
    """(imported package module, inside a function) for each package-internal import of a module."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    in_function = {id(node) for f in ast.walk(tree) if isinstance(f, (ast.FunctionDef, ast.AsyncFunctionDef))
                   for node in ast.walk(f)}
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    top = next(iter(modules)).split(".")[0]
    out = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                base = ".".join(parts + ([base] if base else []))
            subs = [f"{base}.{alias.name}" for alias in node.names if f"{base}.{alias.name}" in modules]
            targets = subs if len(subs) == len(node.names) else [base, *subs]
        else:
            continue
        for target in targets:
            if target.split(".")[0] != top:
                continue
            while target not in modules:  # hetreg_jax.a.b.name -> hetreg_jax.a.b
                target = target.rpartition(".")[0]
            if target != name:
                out.append((target, id(node) in in_function))
    return out


def layer_of(name: str, layers) -> int:
    """The layer of the longest entry that is ``name`` or a package above it."""
    matches = [(len(p), i) for i, prefixes in enumerate(layers) for p in prefixes
               if name == p or name.startswith(p + ".")]
    if not matches:
        raise KeyError(f"{name} is in no layer: add it to LAYERS")
    return max(matches)[1]


def problems(graph: dict[str, list[tuple[str, bool]]], layers, lazy=frozenset()) -> list[str]:
    """Cycles, imports inside functions and imports of a higher layer, one line each."""
    out = []
    for module, targets in sorted(graph.items()):
        for target, inside in targets:
            if inside and (module, target) not in lazy:
                out.append(f"{module} imports {target} inside a function")
            if layer_of(target, layers) > layer_of(module, layers):
                out.append(f"{module} (layer {layer_of(module, layers)}) imports {target} "
                           f"(layer {layer_of(target, layers)})")
    edges = {m: sorted({t for t, inside in ts if (m, t) not in lazy}) for m, ts in graph.items()}
    state = {}

    def visit(node, path):
        state[node] = "open"
        for nxt in edges.get(node, ()):
            if state.get(nxt) == "open":
                out.append("cycle: " + " -> ".join(path[path.index(nxt):] + [node, nxt]
                                                   if nxt in path else [node, nxt]))
            elif nxt not in state:
                visit(nxt, path + [node])
        state[node] = "done"

    for node in sorted(edges):
        if node not in state:
            visit(node, [])
    return out


def package_graph():
    modules = module_files(PACKAGE)
    return {name: imports_of(name, path, modules) for name, path in modules.items()}


def test_every_module_is_in_a_layer():
    for name in package_graph():
        layer_of(name, LAYERS)


def test_the_package_imports_only_downwards_without_cycles_or_function_imports():
    assert problems(package_graph(), LAYERS, LAZY) == []


@pytest.mark.parametrize("graph, expected", [
    ({"p.low.a": [], "p.high.b": [("p.low.a", False)]}, []),
    ({"p.low.a": [("p.high.b", False)], "p.high.b": []}, ["p.low.a (layer 0) imports p.high.b (layer 1)"]),
    ({"p.low.a": [("p.low.c", True)], "p.low.c": []}, ["p.low.a imports p.low.c inside a function"]),
    ({"p.low.a": [("p.low.c", False)], "p.low.c": [("p.low.a", False)]}, ["cycle: p.low.a -> p.low.c -> p.low.a"]),
])
def test_the_check_fails_on_a_bad_graph(graph, expected):
    assert problems(graph, [["p.low"], ["p.high"]]) == expected


def test_imports_are_read_from_the_source(tmp_path):
    package = tmp_path / "p"
    (package / "low").mkdir(parents=True)
    (package / "__init__.py").write_text("")
    (package / "low" / "__init__.py").write_text("")
    (package / "low" / "a.py").write_text("from p.low import c\n\ndef f():\n    from . import c\n    import p\n")
    (package / "low" / "c.py").write_text("import os\nfrom p.low.a import f\n")
    modules = module_files(package)
    assert imports_of("p.low.a", modules["p.low.a"], modules) == [("p.low.c", False), ("p.low.c", True), ("p", True)]
    assert imports_of("p.low.c", modules["p.low.c"], modules) == [("p.low.a", False)]
