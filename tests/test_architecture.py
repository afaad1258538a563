"""The import graph of modelhopper: no cycles, and no layer imports one above it.

Every import counts, wherever it is written: at module level, inside a function
(lazy), or under ``TYPE_CHECKING``. The layers are written once, here, bottom
to top (docs/architecture.md draws them); a module belongs to the layer of the
longest prefix that names it.
"""

from __future__ import annotations

import grimp
import pytest

LAYERS: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("ground", ("errors", "_checks", "_vocabulary", "_ranking", "_pareto", "_progress",
                "_state_format", "_process", "_version", "provenance", "_pick_index")),
    ("foundations", ("_domains", "space", "data", "store", "scheduling", "_loader",
                     "_procedure_file")),
    ("models", ("estimator", "_data_parallel", "_keras", "representations", "transfer")),
    ("execution", ("executors",)),
    ("driver", ("_recording", "commands", "_driver")),
    ("runs", ("_plot", "result", "_preflight", "experiment", "handle", "export")),
    ("interfaces", ("procedures", "cli", "server", "testing", "")),  # "": the package face
)  # fmt: skip
PACKAGE = "modelhopper"


@pytest.fixture(scope="module")
def graph() -> grimp.ImportGraph:
    return grimp.build_graph(PACKAGE, include_external_packages=False)


def layer_of(module: str) -> int:
    """The index in LAYERS of the longest prefix naming ``module``."""
    name = module.removeprefix(PACKAGE).removeprefix(".")
    best, best_length = None, -1
    for index, (_, prefixes) in enumerate(LAYERS):
        for prefix in prefixes:
            named = name == prefix or name.startswith(prefix + ".") or prefix == ""
            if named and len(prefix) > best_length:
                best, best_length = index, len(prefix)
    assert best is not None, f"{module} is in no layer; add it to LAYERS"
    return best


def edges(graph: grimp.ImportGraph) -> list[tuple[str, str]]:
    return sorted(
        (importer, imported)
        for importer in graph.modules
        for imported in graph.find_modules_directly_imported_by(importer)
        if importer.startswith(PACKAGE) and imported.startswith(PACKAGE)
    )


def cycles(pairs: list[tuple[str, str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan), and self-imports."""
    successors: dict[str, list[str]] = {}
    for a, b in pairs:
        successors.setdefault(a, []).append(b)
        successors.setdefault(b, [])
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for nxt in successors[node]:
            if nxt not in index:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in on_stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1 or node in successors[node]:
                found.append(sorted(component))

    for node in sorted(successors):
        if node not in index:
            visit(node)
    return found


def test_the_import_graph_has_no_cycle(graph: grimp.ImportGraph) -> None:
    # A package's face imports its submodules; a submodule importing its own package's
    # face back would be a cycle, and is one here.
    assert cycles(edges(graph)) == []


def test_no_module_imports_one_from_a_higher_layer(graph: grimp.ImportGraph) -> None:
    upward = [
        f"{a} ({LAYERS[layer_of(a)][0]}) -> {b} ({LAYERS[layer_of(b)][0]})"
        for a, b in edges(graph)
        if layer_of(b) > layer_of(a)
    ]
    assert upward == []


def test_every_module_has_a_layer_and_the_ground_imports_nothing_above_it(
    graph: grimp.ImportGraph,
) -> None:
    modules = sorted(m for m in graph.modules if m.startswith(PACKAGE))
    assert len(modules) > 50  # the graph was built from the real package
    ground = [m for m in modules if layer_of(m) == 0]
    assert f"{PACKAGE}._vocabulary" in ground
    for module in ground:
        imported = graph.find_modules_directly_imported_by(module)
        assert all(layer_of(i) == 0 for i in imported if i.startswith(PACKAGE)), module


def test_the_checks_see_a_cycle_and_an_upward_import() -> None:
    """The checks themselves: a made-up graph with both faults is caught."""
    pairs = [("modelhopper.a", "modelhopper.b"), ("modelhopper.b", "modelhopper.a"),
             ("modelhopper.c", "modelhopper.a")]  # fmt: skip
    assert cycles(pairs) == [["modelhopper.a", "modelhopper.b"]]
    assert layer_of("modelhopper.store._sql") < layer_of("modelhopper._driver")
    assert layer_of("modelhopper.procedures._hyperband") == len(LAYERS) - 1
    assert layer_of("modelhopper") == len(LAYERS) - 1


def _modules_after(code: str) -> set[str]:
    import subprocess
    import sys

    done = subprocess.run(
        [sys.executable, "-c", f"{code}\nimport sys; print(' '.join(sys.modules))"],
        capture_output=True, text=True, timeout=300, check=True,
    )  # fmt: skip
    return set(done.stdout.split())


def test_a_worker_imports_neither_the_store_nor_the_procedures() -> None:
    """The package face imports on first use: a worker process (a Ray actor imports
    these two modules) starts without SQLAlchemy, pandas or the procedures, and the
    command line shows its help without torch."""
    worker = _modules_after("import modelhopper.executors._ray, modelhopper.executors._worker")
    assert "torch" in worker
    assert not {"sqlalchemy", "pandas", "modelhopper.store", "modelhopper.procedures"} & worker
    assert "torch" not in _modules_after("import modelhopper, modelhopper.cli")


def test_every_public_name_resolves_from_the_package_face() -> None:
    import modelhopper as mh

    assert set(mh._WHERE) | {"__version__"} == set(mh.__all__)
    # what type checkers and editors see (the TYPE_CHECKING imports) is what _WHERE loads
    import ast
    import inspect

    tree = ast.parse(inspect.getsource(mh))
    (checking,) = [n for n in tree.body if isinstance(n, ast.If)]
    seen = {a.name: n.module for n in checking.body if isinstance(n, ast.ImportFrom)
            for a in n.names}  # fmt: skip
    assert seen == mh._WHERE
    for name in mh.__all__:
        assert getattr(mh, name) is not None, name
    assert set(mh.__all__) <= set(dir(mh))
    with pytest.raises(AttributeError, match="has no attribute 'Nope'"):
        mh.Nope  # noqa: B018
