"""The facts of the house's structure, measured from the source (no imports of paragen, no torch).

    python scripts/structure.py [SRC]        # SRC: the package directory, default src/paragen

Prints the number of Python files and lines under the package, the 10 largest files, the 10
largest functions and methods (lines from ``def`` to the end of the body, via ``ast``), and the
import cycles between paragen modules: the module import graph is built with ``ast`` from every
``import`` and ``from ... import`` anywhere in a module (inside functions and ``if
TYPE_CHECKING:`` blocks too, so a lazy import that dodges a cycle at run time still counts),
and every strongly connected component of more than one module is a cycle ("none" if none).

An edge goes to the module named: ``from paragen.x import y`` is an edge to ``paragen.x.y`` when
that is a module, else to ``paragen.x``; a package's ``__init__`` is the node named by the
package. Importing ``paragen.x.y`` also runs the package ``__init__`` files above it; those
implicit edges are not counted (every module would otherwise sit in a cycle with the top-level
package that re-exports the API).
"""

from __future__ import annotations

import ast
import sys
from pathlib import Path


def module_name(path: Path, root: Path) -> str:
    parts = list(path.relative_to(root.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def imports(tree: ast.AST, name: str, is_package: bool, modules: set[str], top: str) -> set[str]:
    """The paragen modules ``name`` imports anywhere in its source."""
    out: set[str] = set()
    package = name if is_package else name.rpartition(".")[0]
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                out.add(nearest(alias.name, modules))
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - (node.level - 1)]
                source = ".".join(base + ([node.module] if node.module else []))
            else:
                source = node.module or ""
            if source != top and not source.startswith(top + "."):
                continue
            for alias in node.names:
                full = f"{source}.{alias.name}"
                out.add(full if full in modules else nearest(source, modules))
    out.discard(None)
    return {m for m in out if m and (m == top or m.startswith(top + ".")) and m != name}


def nearest(dotted: str, modules: set[str]) -> str | None:
    """The longest prefix of ``dotted`` that is a module of the package."""
    parts = dotted.split(".")
    while parts:
        if ".".join(parts) in modules:
            return ".".join(parts)
        parts.pop()
    return None


def components(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components (Tarjan, iterative)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    on: set[str] = set()
    stack: list[str] = []
    out: list[list[str]] = []
    counter = 0
    for start in sorted(graph):
        if start in index:
            continue
        work = [(start, iter(sorted(graph[start])))]
        index[start] = low[start] = counter
        counter += 1
        stack.append(start)
        on.add(start)
        while work:
            node, edges = work[-1]
            for nxt in edges:
                if nxt not in index:
                    index[nxt] = low[nxt] = counter
                    counter += 1
                    stack.append(nxt)
                    on.add(nxt)
                    work.append((nxt, iter(sorted(graph[nxt]))))
                    break
                if nxt in on:
                    low[node] = min(low[node], index[nxt])
            else:
                work.pop()
                if work:
                    low[work[-1][0]] = min(low[work[-1][0]], low[node])
                if low[node] == index[node]:
                    comp = []
                    while True:
                        w = stack.pop()
                        on.discard(w)
                        comp.append(w)
                        if w == node:
                            break
                    out.append(sorted(comp))
    return out


def main(src: str = "src/paragen") -> None:
    root = Path(src).resolve()
    top = root.name
    files = sorted(root.rglob("*.py"))
    texts = {p: p.read_text() for p in files}
    trees = {p: ast.parse(t, str(p)) for p, t in texts.items()}
    lines = {p: len(t.splitlines()) for p, t in texts.items()}
    rel = {p: str(p.relative_to(root.parent)) for p in files}

    print(f"files: {len(files)}   lines: {sum(lines.values())}   (Python files under {root.parent.name}/{top})")
    print("\nlargest files (lines):")
    for p in sorted(files, key=lambda p: (-lines[p], rel[p]))[:10]:
        print(f"  {lines[p]:5d}  {rel[p]}")

    functions = []
    for p, tree in trees.items():
        stack = [(tree, "")]
        while stack:
            node, prefix = stack.pop()
            for child in ast.iter_child_nodes(node):
                if isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
                    qual = f"{prefix}{child.name}"
                    if not isinstance(child, ast.ClassDef):
                        start = min([child.lineno] + [d.lineno for d in child.decorator_list])
                        functions.append((child.end_lineno - start + 1, rel[p], qual))
                    stack.append((child, qual + "."))
                else:
                    stack.append((child, prefix))
    print("\nlargest functions (lines, decorators included):")
    for n, path, qual in sorted(functions, key=lambda f: (-f[0], f[1], f[2]))[:10]:
        print(f"  {n:5d}  {path}:{qual}")

    names = {p: module_name(p, root) for p in files}
    modules = set(names.values())
    graph = {names[p]: imports(trees[p], names[p], p.name == "__init__.py", modules, top) for p in files}
    edges = sum(map(len, graph.values()))
    cycles = [c for c in components(graph) if len(c) > 1]
    print(f"\nimport graph: {len(modules)} modules, {edges} edges (imports anywhere in a module, lazy ones included)")
    print("import cycles (strongly connected components of more than one module):")
    if not cycles:
        print("  none")
    for c in sorted(cycles, key=lambda c: (-len(c), c)):
        inside = set(c)
        print(f"  {len(c)} modules: {', '.join(c)}")
        for m in c:
            print(f"      {m} -> {', '.join(sorted(graph[m] & inside))}")


if __name__ == "__main__":
    main(*sys.argv[1:])
