"""The layers of flcomp and what each may import (see the folder rules in README's
"Layout"): every import counts, lazy and TYPE_CHECKING ones included."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "flcomp"

MAY_IMPORT = {
    "flcomp": set(),
    "flcomp.keyvalue": set(),
    "flcomp.codecs": {"flcomp.keyvalue"},
    "flcomp.channel": {"flcomp.keyvalue"},
    "flcomp.protocol": {"flcomp.codecs"},
    "flcomp.clients": {"flcomp.codecs", "flcomp.protocol"},
    "flcomp.strategies": {"flcomp.codecs", "flcomp.protocol", "flcomp.channel", "flcomp.keyvalue"},
    "flcomp.tasks": set(),
    "flcomp.sim": {
        "flcomp.codecs",
        "flcomp.channel",
        "flcomp.protocol",
        "flcomp.clients",
        "flcomp.strategies",
        "flcomp.tasks",
    },
    "flcomp.cli": {"flcomp.codecs", "flcomp.channel", "flcomp.sim", "flcomp.tasks"},
}
"""Each layer (a top-level module or package of flcomp) and the other layers it may import."""

FRAMEWORKS = ("flwr", "ray", "torch")
TORCH_IN_CODECS = {"flcomp.codecs.compressors.lgc.autoencoder"}
"""The one codec module that may import torch (LGC's autoencoder, on the server and leader)."""

MAX_LINES = 450


def modules() -> dict[str, Path]:
    out = {}
    for path in PACKAGE.rglob("*.py"):
        parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        out[name] = path
    return out


MODULES = modules()


def imports(name: str) -> set[str]:
    """Every module `name` imports, at any depth of its code (flcomp modules resolved to files)."""
    path = MODULES[name]
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.rsplit(".", node.level - 1)[0] if node.level > 1 else package
                base = f"{anchor}.{base}" if base else anchor
            for a in node.names:
                found.add(f"{base}.{a.name}" if f"{base}.{a.name}" in MODULES else base)
    return found


def flcomp_module(imported: str) -> str | None:
    """The flcomp module (file) an import names, None outside flcomp."""
    while imported and imported not in MODULES:
        imported = imported.rpartition(".")[0]
    return imported or None


def layer(name: str) -> str:
    return ".".join(name.split(".")[:2])


GRAPH = {
    name: {m for i in imports(name) if (m := flcomp_module(i)) is not None and m != name} for name in MODULES
}


def test_no_import_circles():
    """Tarjan's strongly connected components of the module graph: all of size one."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    circles = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        for w in GRAPH[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                circles.append(sorted(component))

    for v in sorted(GRAPH):
        if v not in index:
            visit(v)
    assert circles == []


@pytest.mark.parametrize("name", sorted(MODULES))
def test_each_module_imports_only_the_layers_its_layer_may(name):
    allowed = MAY_IMPORT[layer(name)] | {layer(name), "flcomp"}
    crossing = {m for m in GRAPH[name] if layer(m) not in allowed}
    assert not crossing, f"{name} imports {sorted(crossing)}"


@pytest.mark.parametrize(
    "name", sorted(n for n in MODULES if layer(n) in ("flcomp.codecs", "flcomp.channel"))
)
def test_codecs_and_channel_know_no_framework(name):
    frameworks = {i.split(".")[0] for i in imports(name)} & set(FRAMEWORKS)
    if name in TORCH_IN_CODECS:
        frameworks -= {"torch"}
    assert not frameworks, f"{name} imports {sorted(frameworks)}"


def test_no_private_name_crosses_a_module():
    """Helpers two modules share are public functions of the module that owns them."""
    crossing = []
    for name, path in MODULES.items():
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("flcomp"):
                crossing += [f"{name}: {node.module}.{a.name}" for a in node.names if a.name.startswith("_")]
    assert crossing == []


def test_no_module_is_over_the_line_budget():
    long = {
        name: n for name, path in MODULES.items() if (n := len(path.read_text().splitlines())) > MAX_LINES
    }
    assert long == {}


CORE = {f"flcomp.codecs.{m}" for m in ("errors", "spec", "wire", "compressor", "endpoints")}
"""The codecs' protocol core: it imports nothing of the coding primitives, wrappers or compressors."""


def inside(name: str, package: str) -> bool:
    return name == package or name.startswith(package + ".")


@pytest.mark.parametrize("name", sorted(n for n in MODULES if layer(n) == "flcomp.codecs"))
def test_inside_codecs_each_role_imports_only_what_it_may(name):
    imported = GRAPH[name]
    if name in CORE:
        assert imported <= CORE, f"{name} imports {sorted(imported - CORE)}"
    if inside(name, "flcomp.codecs.coding"):
        allowed = {"flcomp.codecs.errors", "flcomp.codecs.wire", "flcomp.codecs.spec"}
        crossing = {m for m in imported if m not in allowed and not inside(m, "flcomp.codecs.coding")}
        assert not crossing, f"{name} imports {sorted(crossing)}"
    if inside(name, "flcomp.codecs.compressors") and name != "flcomp.codecs.compressors.lgc.pool":
        # A compressor never builds decoders or pools (the registry names a codec's pool).
        assert "flcomp.codecs.endpoints" not in imported, f"{name} imports the endpoints"
        assert not any(inside(m, "flcomp.codecs.wrappers") for m in imported), f"{name} imports a wrapper"
