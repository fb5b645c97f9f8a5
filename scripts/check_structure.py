"""The shape of ``streamlib/``, checked from its source: the import graph has no cycle (arrows point down), each folder
imports only from itself and the folders below it (:data:`FOLDERS`, bottom first; the package's top-level modules sit
above them all), no module is longer than :data:`MAX_LINES`, and no module switches on a policy's or a cache's type
except the module that defines it.

    .venv/bin/python scripts/check_structure.py          # prints the folders and the modules in layers; exit 1 on a violation

``tests/test_structure.py`` runs the same checks.
"""

from __future__ import annotations

import ast
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = ROOT / "streamlib"
# The package's folders, bottom first: each imports only from itself and those before it.
FOLDERS = ["core", "loading", "caches", "policies", "metrics", "naive", "experiments", "report", "cli"]
MAX_LINES = 350
# What a cache or policy type offers; asking for it with hasattr is switching on the type.
INTERFACE_BASES = {"PolicyBase", "PolicyCache", "Cache", "CacheLayerMixin"}


def _modules(package: Path = PACKAGE) -> dict[str, Path]:
    out = {}
    for path in sorted(package.rglob("*.py")):
        name = ".".join(path.relative_to(package.parent).with_suffix("").parts)
        out[name.removesuffix(".__init__")] = path
    return out


def import_graph(package: Path = PACKAGE) -> dict[str, set[str]]:
    """Module -> the package's modules it imports (at the top or inside a function)."""
    modules = _modules(package)
    graph = {}
    for name, path in modules.items():
        here = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]
        deps = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom):
                if node.level:
                    parts = here.split(".")[: len(here.split(".")) - node.level + 1]
                    base = ".".join(parts + ([node.module] if node.module else []))
                else:
                    base = node.module or ""
                for candidate in [base] + [f"{base}.{a.name}" for a in node.names]:
                    if candidate in modules and candidate != name:
                        deps.add(candidate)
            elif isinstance(node, ast.Import):
                deps.update(a.name for a in node.names if a.name in modules and a.name != name)
        graph[name] = deps
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan)."""
    index, low, stack, on_stack, found = {}, {}, [], set(), []

    def visit(v):
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for v in graph:
        if v not in index:
            visit(v)
    return found


def layers(graph: dict[str, set[str]]) -> list[list[str]]:
    """Modules in layers: each imports only from the layers below it (needs an acyclic graph)."""
    level: dict[str, int] = {}

    def depth(v):
        if v not in level:
            level[v] = 1 + max((depth(w) for w in graph[v]), default=-1)
        return level[v]

    for v in graph:
        depth(v)
    return [sorted(v for v in graph if level[v] == k) for k in range(max(level.values()) + 1)]


def _classes(files: dict[str, Path]) -> dict[str, tuple[str, list[str], set[str]]]:
    """Class name -> (defining module, base names, names it defines)."""
    out = {}
    for name, path in files.items():
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ClassDef):
                bases = [b.id if isinstance(b, ast.Name) else getattr(b, "attr", "") for b in node.bases]
                members = {n.name for n in node.body if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef))}
                members |= {t.id for n in node.body if isinstance(n, (ast.Assign, ast.AnnAssign))
                            for t in (n.targets if isinstance(n, ast.Assign) else [n.target]) if isinstance(t, ast.Name)}
                out[node.name] = (name, bases, members)
    return out


def type_switches(package: Path = PACKAGE, notebooks: Path = ROOT / "notebooks") -> list[str]:
    """``isinstance`` on a policy or cache class outside the module that defines it, and ``hasattr`` asking for
    what such a class offers, anywhere in the package and the notebooks: ``path:line: text``."""
    files = _modules(package)
    classes = _classes(files)

    def is_interface(cls, seen=()):
        if cls in INTERFACE_BASES:
            return True
        if cls not in classes or cls in seen:
            return False
        return any(is_interface(b, seen + (cls,)) for b in classes[cls][1])

    typed = {c: m for c, (m, _, _) in classes.items() if is_interface(c)}
    offered = set().union(*(classes[c][2] for c in typed)) - {"__init__", "name"}
    sources = dict(files) | {f"notebooks/{p.name}": p for p in sorted(notebooks.glob("*.py"))}
    found = []
    for module, path in sources.items():
        for node in ast.walk(ast.parse(path.read_text())):
            if not (isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and len(node.args) == 2):
                continue
            target = node.args[1]
            if node.func.id == "isinstance":
                names = [e.id for e in (target.elts if isinstance(target, ast.Tuple) else [target])
                         if isinstance(e, ast.Name)]
                if any(n in typed and typed[n] != module for n in names):
                    found.append(f"{path.relative_to(package.parent)}:{node.lineno}: {ast.unparse(node)}")
            elif node.func.id in ("hasattr", "getattr") and isinstance(target, ast.Constant) \
                    and target.value in offered:
                found.append(f"{path.relative_to(package.parent)}:{node.lineno}: {ast.unparse(node)}")
    return found


def folder_of(module: str) -> str | None:
    """The folder of ``streamlib.<folder>.<module>``, or None for a top-level module."""
    parts = module.split(".")
    return parts[1] if len(parts) > 2 or (len(parts) == 2 and parts[1] in FOLDERS) else None


def upward_imports(graph: dict[str, set[str]]) -> list[str]:
    """Imports from a folder above the importer's (a top-level module may import anything); and folders that
    :data:`FOLDERS` does not place."""
    rank = {folder: i for i, folder in enumerate(FOLDERS)}
    found = []
    for module, deps in sorted(graph.items()):
        here = folder_of(module)
        if here is not None and here not in rank:
            found.append(f"{module}: its folder {here!r} has no place in FOLDERS")
            continue
        for dep in sorted(deps):
            there = folder_of(dep)
            if here is not None and (there is None or rank.get(there, len(rank)) > rank[here]):
                found.append(f"{module} imports {dep}, from a folder above its own")
    return found


def long_modules(package: Path = PACKAGE) -> list[str]:
    """Modules longer than :data:`MAX_LINES` lines."""
    return [f"{path.relative_to(package.parent)}: {n} lines" for path in sorted(package.rglob("*.py"))
            if (n := len(path.read_text().splitlines())) > MAX_LINES]


def main() -> int:
    graph = import_graph()
    loops = cycles(graph)
    switches = type_switches()
    upward = upward_imports(graph)
    long = long_modules()
    print("folders, bottom first:", " < ".join(FOLDERS), "< the top-level modules")
    if not loops:
        for k, names in enumerate(layers(graph)):
            print(f"layer {k}: {', '.join(n.removeprefix('streamlib.') for n in names)}")
    for loop in loops:
        print("import cycle:", " <-> ".join(loop))
    for line in switches:
        print("type switch:", line)
    for line in upward:
        print("upward import:", line)
    for line in long:
        print("long module:", line)
    bad = loops or switches or upward or long
    print("ok" if not bad else "violations found")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
