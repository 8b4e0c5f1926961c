"""The import graph of ``gateway/``: no cycle, and no module importing from a layer above it.

    python tools/check_layers.py          # exit 1 and one line per problem; `make check` runs it

Layers, top to bottom (a module may import its own layer and those below):

    app        gateway/app/                          command line, configuration, wiring
    serving    gateway/serving/                      the RPC boundary
    store      gateway/store/   backends gateway/backends/   peers: neither imports the other
    telemetry  gateway/telemetry/                    logs and metrics, used by every layer
    kernel     gateway/*.py                          failures, deadline, identifiers, contract

Every import counts, including those under ``if TYPE_CHECKING:`` and inside functions: a
cycle that only the type checker sees is still a boundary in the wrong place.
"""

from __future__ import annotations

import ast
import sys
from collections.abc import Iterator
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = ROOT / "gateway"

# Rank of each layer: a module may import modules of equal or lower rank, except the peers.
RANKS = {"kernel": 0, "telemetry": 1, "store": 2, "backends": 2, "serving": 3, "app": 4}
PEERS = {("store", "backends"), ("backends", "store")}
ENTRY_POINTS = {"gateway.__main__"}  # `python -m gateway` only hands over to gateway.app.cli


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def layer(module: str) -> str:
    parts = module.split(".")
    if len(parts) > 2 or (len(parts) == 2 and parts[1] in RANKS):
        return parts[1]
    return "kernel"


def imports(path: Path, module: str) -> Iterator[str]:
    """The gateway modules ``path`` imports (``from gateway.x import y`` counts ``gateway.x``
    and, when it is a module, ``gateway.x.y``)."""
    tree = ast.parse(path.read_text(encoding="utf-8"), str(path))
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*anchor, base] if base else anchor)
            names = [base] + [f"{base}.{alias.name}" for alias in node.names]
        else:
            continue
        for name in names:
            if name == "gateway" or name.startswith("gateway."):
                yield name


def main() -> int:
    modules = {module_name(path): path for path in PACKAGE.rglob("*.py")}
    graph: dict[str, set[str]] = {}
    problems: list[str] = []
    for module, path in sorted(modules.items()):
        targets = {name for name in imports(path, module) if name in modules}
        targets.discard(module)
        graph[module] = targets
        if module in ENTRY_POINTS:
            continue
        here = layer(module)
        for target in sorted(targets):
            there = layer(target)
            if target == "gateway":  # the package itself holds only __version__
                continue
            if (here, there) in PEERS or RANKS[there] > RANKS[here]:
                problems.append(f"{module} ({here}) imports {target} ({there}): a layer above")
    problems.extend(f"import cycle: {' -> '.join(cycle)}" for cycle in _cycles(graph))
    for problem in problems:
        print(problem, file=sys.stderr)
    if not problems:
        print(f"layers: {len(modules)} modules, no cycle, no import from a layer above")
    return 1 if problems else 0


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """One cycle per strongly connected component larger than a module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for target in sorted(graph.get(node, ())):
            if target not in index:
                visit(target)
                low[node] = min(low[node], low[target])
            elif target in on_stack:
                low[node] = min(low[node], index[target])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                found.append([*sorted(component), sorted(component)[0]])

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return found


if __name__ == "__main__":
    sys.exit(main())
