"""The package's import graph, read with `ast` (nothing is imported): no cycle between package modules, and the data
layer and the library never import upwards (data/ imports only data/ and the error family; nothing imports the
command line)."""
import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parent.parent / "llada_jax"


def module_names(root):
    """{dotted module name: path} of every .py file of the package at `root` (hf_files are export templates)."""
    out = {}
    for path in sorted(root.rglob("*.py")):
        rel = path.relative_to(root.parent).with_suffix("")
        if "hf_files" in rel.parts:
            continue
        parts = rel.parts[:-1] if rel.name == "__init__" else rel.parts
        out[".".join(parts)] = path
    return out


def imports_of(name, path, modules):
    """The package modules that module `name` imports anywhere in its file (top level or inside a function)."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:  # relative: `from .. import x` climbs level - 1 packages from this one
                parts = package.split(".")
                base = ".".join(parts[: len(parts) - node.level + 1] + ([base] if base else []))
            targets = [f"{base}.{a.name}" for a in node.names] + [base]
        else:
            continue
        for t in targets:
            while t and t not in modules:  # `from pkg import name`: the module pkg.name if it is one, else pkg
                t = t.rpartition(".")[0]
            if t and t != name and modules[t].name != "__init__.py":
                found.add(t)
    return found


def import_graph(root):
    modules = module_names(root)
    return {name: imports_of(name, path, modules) for name, path in modules.items()}


def find_cycle(graph):
    """One import cycle as a list [a, b, ..., a], or None."""
    state, stack = {}, []

    def visit(node):
        state[node] = "open"
        stack.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == "open":
                return stack[stack.index(nxt):] + [nxt]
            if nxt not in state:
                cycle = visit(nxt)
                if cycle:
                    return cycle
        state[node] = "done"
        stack.pop()
        return None

    for node in sorted(graph):
        if node not in state:
            cycle = visit(node)
            if cycle:
                return cycle
    return None


def test_no_import_cycle_between_package_modules():
    graph = import_graph(PACKAGE)
    assert "llada_jax.data.tasks" in graph and "llada_jax.train" in graph["llada_jax.cli"]  # the walk sees imports
    assert find_cycle(graph) is None, " -> ".join(find_cycle(graph))


def test_no_upward_imports():
    graph = import_graph(PACKAGE)
    for name, deps in graph.items():
        assert "llada_jax.cli" not in deps, f"{name} imports the command line"
        if name.startswith("llada_jax.data."):
            above = {d for d in deps if not d.startswith("llada_jax.data.")} - {"llada_jax.errors"}
            assert not above, f"{name} imports above the data layer: {above}"


def test_the_checker_finds_a_cycle(tmp_path):
    """Two modules that import each other (one inside a function, one relatively) form a cycle; a third does not."""
    pkg = tmp_path / "pkg"
    (pkg / "sub").mkdir(parents=True)
    for f in ("__init__.py", "sub/__init__.py"):
        (pkg / f).write_text("")
    (pkg / "a.py").write_text("import os\nfrom pkg.sub import b\n")
    (pkg / "sub" / "b.py").write_text("def f():\n    from .. import c\n")
    (pkg / "c.py").write_text("import pkg.a as a_lib\n")
    graph = import_graph(pkg)
    assert graph["pkg.a"] == {"pkg.sub.b"} and graph["pkg.sub.b"] == {"pkg.c"} and graph["pkg.c"] == {"pkg.a"}
    assert find_cycle(graph) == ["pkg.a", "pkg.sub.b", "pkg.c", "pkg.a"]
    (pkg / "c.py").write_text("import os\n")
    assert find_cycle(import_graph(pkg)) is None
