"""The library's import graph, read from its source: no cycles, and no import from a lower layer
to an upper one -- function-local imports included (an import inside a function is still a
dependency; it only hides a cycle from Python)."""

import ast
from pathlib import Path

import specdec

PACKAGE = Path(specdec.__file__).parent

#: The layers, lowest first (the design's table): a module may import its own layer and the ones below.
LAYERS = {
    1: {"sampling", "theory", "metrics", "checks", "profiling", "provenance", "book", "profiles", "cli",
        "roofline"},  # figures, and chapter 1's cost model
    2: {"cache", "batchcache", "tokentree"},  # the caches, and the tree structure the tree pass reads
    3: {"drafters", "decoding", "batchdecoding", "trees", "steptime", "microbench"},  # drafting, loops, timing
    4: {"registry", "loaders", "quant", "fastpath", "synthetic", "selfspec", "prompts", "hfpeers", "stepcosts",
        "vocabs", "serving", "packaged"},
    5: {"eagle", "eagle3export", "headdata", "headanswers", "headloss", "headtrain", "crossvocab"},  # methods of chapters 8 and 10
    6: {"pairs", "sweepplan", "bench", "enginebench", "headbench", "headablate", "servebench", "crossvocabbench",
        "analysis", "plots", "display"},  # measuring
    7: {"__main__", "__init__"},  # entry points
}
LAYER = {m: n for n, mods in LAYERS.items() for m in mods}


def import_graph(root: Path = PACKAGE) -> dict[str, dict[str, int]]:
    """``{module: {imported module: first line}}`` over every ``import`` in every module's source."""
    modules = {p.stem for p in root.glob("*.py")}
    graph = {}
    for path in sorted(root.glob("*.py")):
        deps: dict[str, int] = {}
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            names = []
            if isinstance(node, ast.ImportFrom) and node.level == 1:
                names = [node.module.split(".")[0]] if node.module else [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and (node.module or "").startswith("specdec"):
                parts = node.module.split(".")
                names = [parts[1]] if len(parts) > 1 else [a.name for a in node.names]
            elif isinstance(node, ast.Import):
                names = [a.name.split(".")[1] for a in node.names if a.name.startswith("specdec.")]
            for name in names:
                if name in modules and name != path.stem:
                    deps.setdefault(name, node.lineno)
        graph[path.stem] = deps
    return graph


def cycles(graph) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan)."""
    index, low, stack, on, out, counter = {}, {}, [], set(), [], [0]

    def visit(v):
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return out


def test_the_graph_reader_sees_function_local_imports(tmp_path):
    (tmp_path / "a.py").write_text("def f():\n    from .b import x\n")
    (tmp_path / "b.py").write_text("from specdec.a import f\n")
    (tmp_path / "c.py").write_text("import specdec.b\n")
    graph = import_graph(tmp_path)
    assert graph == {"a": {"b": 2}, "b": {"a": 1}, "c": {"b": 1}}
    assert cycles(graph) == [["a", "b"]]


def test_no_import_cycles():
    found = cycles(import_graph())
    assert not found, f"import cycles in specdec: {found}"


def test_every_module_has_a_layer():
    missing = sorted(set(import_graph()) - set(LAYER))
    assert not missing, f"place these modules in a layer of tests/test_layers.py: {missing}"


def test_lower_layers_never_import_upper_ones():
    graph = import_graph()
    upward = [f"{m} (layer {LAYER[m]}) imports {d} (layer {LAYER[d]}) at line {line}"
              for m, deps in graph.items() for d, line in deps.items() if LAYER.get(d, 0) > LAYER.get(m, 99)]
    assert not upward, "\n".join(upward)
