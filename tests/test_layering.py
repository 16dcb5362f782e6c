"""The package's layering, read from its import graph with `ast` (function-local imports count too):
no import cycle among dnncompress modules, and quant/ is pure tensor math that imports nothing
from the model, pack, stage or CLI side."""
import ast
from pathlib import Path

PKG = Path(__file__).resolve().parent.parent / "dnncompress"


def _module(path: Path) -> str:
    parts = list(path.relative_to(PKG.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _exists(name: str) -> bool:
    base = PKG.parent / name.replace(".", "/")
    return base.with_suffix(".py").exists() or (base / "__init__.py").exists()


def import_graph() -> dict[str, set[str]]:
    """module → the dnncompress modules it imports anywhere in its file. `from . import x` of a
    submodule x is an edge to x only (its package is the importer's parent, imported anyway)."""
    graph = {}
    for path in sorted(PKG.rglob("*.py")):
        name = _module(path)
        package = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]
        deps = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom):
                if node.level:
                    base = package.split(".")[: len(package.split(".")) - node.level + 1]
                    target = ".".join(base + ([node.module] if node.module else []))
                else:
                    target = node.module or ""
                if not target.startswith("dnncompress"):
                    continue
                subs = [f"{target}.{a.name}" for a in node.names if _exists(f"{target}.{a.name}")]
                deps.update(subs)
                if len(subs) < len(node.names):
                    deps.add(target)
            elif isinstance(node, ast.Import):
                deps.update(a.name for a in node.names if a.name.startswith("dnncompress"))
        deps.discard(name)
        graph[name] = {d for d in deps if d in graph or _exists(d)}
    return graph


def _cycle(graph) -> list[str] | None:
    """One import cycle, if any (depth-first search with colours)."""
    state, path = {}, []

    def visit(v):
        state[v] = 1
        path.append(v)
        for w in sorted(graph.get(v, ())):
            if state.get(w) == 1:
                return path[path.index(w):] + [w]
            if w not in state and (found := visit(w)):
                return found
        state[v] = 2
        path.pop()
        return None

    for v in sorted(graph):
        if v not in state and (found := visit(v)):
            return found
    return None


def test_no_import_cycle():
    cycle = _cycle(import_graph())
    assert cycle is None, " → ".join(cycle)


def test_the_cycle_finder_finds_one():
    assert _cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert _cycle({"a": {"b"}, "b": set()}) is None


def test_quant_imports_only_errors_registry_and_itself():
    """…and compiled, the leaf that finds the optional numba kernels (it imports nothing of ours)."""
    graph = import_graph()
    assert not {d for d in graph["dnncompress.compiled"] if d.startswith("dnncompress")}
    for name, deps in graph.items():
        if name == "dnncompress.quant" or name.startswith("dnncompress.quant."):
            outside = {d for d in deps if not d.startswith("dnncompress.quant")} - {"dnncompress.errors", "dnncompress.registry", "dnncompress.compiled"}
            assert not outside, f"{name} imports {sorted(outside)}"


def test_the_graph_sees_function_local_imports():
    graph = import_graph()
    assert "dnncompress.validate" in graph["dnncompress.pack"]  # imported inside vet_packed
