"""The packages have no import cycles: each module can be read, and moved, on its own.

Every import counts, at module level or inside a function: a lazy import still ties the two
modules together (the TUI's screens once imported each other to navigate). The graph is read
with `ast`, so nothing is imported to check it.
"""

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("agent", "server", "xenp2v")


def module_name(path):
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def imported_names(tree, name, is_package):
    """The dotted names one module's source imports, relative imports resolved: for `from X
    import Y`, both X.Y (when Y is a module) and X (when Y is a name defined in X)."""
    package = name if is_package else name.rpartition(".")[0]
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield (alias.name,)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - (node.level - 1)]
                prefix = ".".join(base + ([node.module] if node.module else []))
            else:
                prefix = node.module
            for alias in node.names:
                yield (prefix, f"{prefix}.{alias.name}")


def import_graph():
    files = {}
    for pkg in PACKAGES:
        for path in sorted((ROOT / pkg).rglob("*.py")):
            files[module_name(path)] = path
    graph = {}
    for name, path in files.items():
        tree = ast.parse(path.read_text(), str(path))
        targets = set()
        for candidates in imported_names(tree, name, path.name == "__init__.py"):
            # `from agent.probe import disks` ties to agent.probe.disks, not to the package's
            # __init__ (a parent package is always imported first; that is no cycle).
            imported = candidates[-1]
            while imported and imported not in files:
                imported = imported.rpartition(".")[0]
            if imported and imported != name:
                targets.add(imported)
        graph[name] = sorted(targets)
    return graph


def cycles(graph):
    """The strongly connected components with more than one module (Tarjan's algorithm)."""
    index, low, on_stack, stack, found = {}, {}, set(), [], []

    def visit(v):
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in graph.get(v, ()):
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

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def describe(component, graph):
    members = set(component)
    edges = [f"  {a} -> {b}" for a in component for b in graph[a] if b in members]
    return ", ".join(component) + "\n" + "\n".join(edges)


def test_cycle_finder_finds_a_cycle_and_only_cycles():
    graph = {"a": ["b"], "b": ["c"], "c": ["a"], "d": ["a"], "e": []}
    assert cycles(graph) == [["a", "b", "c"]]


def test_the_graph_sees_function_level_and_relative_imports():
    source = ("from agent.probe import disks, Machine\n"
              "def go():\n    from agent.tui.vm import VmScreen\n"
              "class A:\n    def f(self):\n        from . import common\n")
    names = set(imported_names(ast.parse(source), "agent.tui.start", False))
    assert names == {("agent.probe", "agent.probe.disks"), ("agent.probe", "agent.probe.Machine"),
                     ("agent.tui.vm", "agent.tui.vm.VmScreen"),
                     ("agent.tui", "agent.tui.common")}
    graph = import_graph()
    assert "xenp2v.protocol" in graph["agent.transfer.client"]
    assert "agent.probe.disks" in graph["agent.probe.prober"]


def test_no_import_cycles():
    graph = import_graph()
    found = cycles(graph)
    assert not found, "import cycles (each line an import inside the cycle):\n" + "\n\n".join(
        describe(c, graph) for c in found
    )
