"""The import graph runs one way and has no circles.

Layers, top to bottom: the app layer (`clients/`: the CLI, the SDK, the embedded mode), the
services (`services/*`), the shared library (`tunewire/`). A module may import from its own layer
or below, never above. Every import statement counts: module level, inside functions, under
`TYPE_CHECKING`, in `try` blocks. Tests and benchmarks sit above everything and are not checked.
"""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
LAYERS = {"clients": 3, "services": 2, "tunewire": 1}


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _modules() -> dict[str, Path]:
    return {
        _module_name(path): path
        for top in LAYERS
        for path in sorted((ROOT / top).rglob("*.py"))
        if "__pycache__" not in path.parts
    }


MODULES = _modules()


def _target(name: str) -> str | None:
    """The repository module an imported name lives in (a submodule when it is one)."""
    while name:
        if name in MODULES:
            return name
        name = name.rpartition(".")[0]
    return None


def _imports(module: str, source: str, is_package: bool = False) -> list[tuple[int, str]]:
    """(line, imported module) for every import statement of `module` that names ours."""
    package = module if is_package else module.rpartition(".")[0]
    found = []
    for node in ast.walk(ast.parse(source, module)):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*anchor, base] if base else anchor)
            # `from pkg import sub` imports the submodule `pkg.sub` when there is one.
            names = [f"{base}.{alias.name}" for alias in node.names] or [base]
        else:
            continue
        for name in names:
            target = _target(name)
            if target is not None and target != module:
                found.append((node.lineno, target))
    return found


GRAPH = {
    module: _imports(module, path.read_text(), path.name == "__init__.py")
    for module, path in MODULES.items()
}


def _layer(module: str) -> int:
    return LAYERS[module.split(".")[0]]


def test_no_import_runs_up_a_layer():
    upward = [
        f"{MODULES[module].relative_to(ROOT)}:{line} imports {target}"
        for module, edges in GRAPH.items()
        for line, target in edges
        if _layer(target) > _layer(module)
    ]
    assert not upward, "imports that run back up a layer:\n" + "\n".join(upward)


def _service(module: str) -> str | None:
    """The service a module belongs to (`services.embedder...` -> `embedder`), if any."""
    parts = module.split(".")
    return parts[1] if parts[0] == "services" and len(parts) > 1 else None


def test_no_service_imports_another_service():
    """Services meet through the wire (the client classes in `tunewire/clients/`); logic two
    services share lives in `tunewire/`."""
    across = [
        f"{MODULES[module].relative_to(ROOT)}:{line} imports {target}"
        for module, edges in GRAPH.items()
        for line, target in edges
        if _service(module) and _service(target) and _service(target) != _service(module)
    ]
    assert not across, "a service that imports another service:\n" + "\n".join(across)


def _cycles() -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan, iterative)."""
    edges = {m: sorted({t for _, t in GRAPH[m]}) for m in GRAPH}
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    out = []
    for root in edges:
        if root in index:
            continue
        work = [(root, 0)]
        while work:
            node, i = work.pop()
            if i == 0:
                index[node] = low[node] = len(index)
                stack.append(node)
                on_stack.add(node)
            if i < len(edges[node]):
                work.append((node, i + 1))
                nxt = edges[node][i]
                if nxt not in index:
                    work.append((nxt, 0))
                elif nxt in on_stack:
                    low[node] = min(low[node], index[nxt])
                continue
            if work:
                parent = work[-1][0]
                low[parent] = min(low[parent], low[node])
            if low[node] == index[node]:
                component = []
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    component.append(member)
                    if member == node:
                        break
                if len(component) > 1:
                    out.append(sorted(component))
    return out


def test_no_import_cycles():
    cycles = _cycles()
    assert not cycles, "modules that import each other (directly or around a circle):\n" + (
        "\n".join(" <-> ".join(c) for c in cycles)
    )


def test_the_walk_sees_every_kind_of_import():
    """Imports inside functions, under TYPE_CHECKING and relative ones all count."""
    source = (
        "from typing import TYPE_CHECKING\n"
        "if TYPE_CHECKING:\n    from clients.sdk import EncoderSpec\n"
        "def f():\n    import services.trainer.runner\n"
        "from . import errors\n"
        "from .clients import rpc\n"
    )
    found = {target for _, target in _imports("tunewire.probe", source)}
    assert found == {
        "clients.sdk",
        "services.trainer.runner",
        "tunewire.errors",
        "tunewire.clients.rpc",
    }
