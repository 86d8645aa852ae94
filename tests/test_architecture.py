"""The package's shape: no import cycle between esjax modules (function-local imports included), short modules,
and docs/architecture.md naming every module and nothing that does not exist."""

import ast
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "esjax"
MAX_LINES = 350


def _modules() -> dict[str, Path]:
    out = {}
    for path in PACKAGE.rglob("*.py"):
        parts = list(path.relative_to(ROOT).with_suffix("").parts)
        out[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return out


def import_graph() -> dict[str, set[str]]:
    """``{module: esjax modules it imports anywhere in its file}``. ``from a import b`` counts as an import of the
    module ``a.b`` when that is a module, else of ``a``; a parent package is not implied by its submodules."""
    modules = _modules()

    def known(name: str) -> str | None:
        while name and name not in modules:
            name = name.rpartition(".")[0]
        return name or None

    graph = {}
    for module, path in modules.items():
        package = module if path.name == "__init__.py" else module.rpartition(".")[0]
        edges = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                edges |= {known(a.name) for a in node.names if a.name.split(".")[0] == "esjax"}
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    up = package.split(".")[: len(package.split(".")) - node.level + 1]
                    base = ".".join(up + ([base] if base else []))
                if base.split(".")[0] == "esjax":
                    edges |= {f"{base}.{a.name}" if f"{base}.{a.name}" in modules else known(base) for a in node.names}
        graph[module] = edges - {module, None}
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    found = []

    def visit(v):
        index[v] = low[v] = len(index)
        stack.append(v)
        for w in graph.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while not component or component[-1] != v:
                component.append(stack.pop())
            if len(component) > 1:
                found.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def test_cycle_finder_finds_a_planted_cycle():
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert cycles({"a": {"b"}, "b": set()}) == []


def test_no_import_cycles():
    graph = import_graph()
    assert graph["esjax.run.loop"] >= {"esjax.run.settings", "esjax.methods.protocol"}  # the parser sees real imports
    assert "esjax.generation.tokenizer" in graph["esjax.run.setup"]  # ... including one inside a function
    assert cycles(graph) == []


def test_modules_are_short():
    long = {str(p.relative_to(ROOT)): n for p in PACKAGE.rglob("*.py") if (n := len(p.read_text().splitlines()))
            > MAX_LINES}
    assert not long, f"split these modules (over {MAX_LINES} lines): {long}"


def test_architecture_doc_names_every_module():
    text = (ROOT / "docs" / "architecture.md").read_text()
    files = {str(p.relative_to(PACKAGE)) for p in PACKAGE.rglob("*.py") if p.name != "__init__.py"}
    named = set(re.findall(r"`([a-z_/]+\.py)`", text)) - {"tests/test_architecture.py"}
    assert not files - named, f"docs/architecture.md does not name {sorted(files - named)}"
    assert not named - files, f"docs/architecture.md names modules that do not exist: {sorted(named - files)}"


def test_folders_are_the_documented_layers():
    """Every sub-package is a folder of docs/architecture.md's layer table, and the root holds no layer's modules."""
    text = (ROOT / "docs" / "architecture.md").read_text()
    documented = set(re.findall(r"\| `([a-z_]+)/` \|", text))
    folders = {p.parent.name for p in PACKAGE.glob("*/__init__.py")}
    assert folders == documented, f"folders {sorted(folders)} vs documented {sorted(documented)}"
    root = {p.name for p in PACKAGE.glob("*.py")}
    assert root == {"__init__.py", "testing.py"}, f"modules at the package root: {sorted(root)}"


def layers() -> dict[str, int]:
    """``{module: layer}`` from docs/architecture.md's table, bottom layer 0 (a row with no layer name continues the
    one above); a package is as high as the highest module in it (importing it runs them)."""
    text = (ROOT / "docs" / "architecture.md").read_text()
    names: list[str] = []
    out = {}
    for row in re.findall(r"^\|(.*)\|$", text, re.M):
        cells = [c.strip() for c in row.split("|")]
        if cells[0] == "layer" or set(cells[0]) <= {"-"} and cells[1].startswith("-"):  # the header
            continue
        if cells[0] and cells[0] not in names:
            names.append(cells[0])
        for path in re.findall(r"`([a-z_/]+\.py)`", cells[2]):
            out["esjax." + path[:-3].replace("/", ".")] = len(names) - 1
    for package in {m.rpartition(".")[0] for m in out if "." in m.removeprefix("esjax.")}:
        out[package] = max(v for m, v in out.items() if m.startswith(package + "."))
    return out


def upward_imports(graph: dict[str, set[str]], layer: dict[str, int]) -> list[str]:
    """``"a -> b"`` for each import of a module from a higher layer (package ``__init__`` files, which only gather
    their modules' names, are not checked)."""
    return sorted(f"{a} -> {b}" for a, edges in graph.items() if a in layer and not _is_package(a)
                  for b in edges if layer.get(b, -1) > layer[a])


def _is_package(module: str) -> bool:
    return (PACKAGE.parent / module.replace(".", "/") / "__init__.py").is_file()


def test_upward_import_finder_finds_a_planted_one():
    graph = {"esjax.common.files": {"esjax.run.loop"}, "esjax.run.loop": {"esjax.common.files"}}
    assert upward_imports(graph, layers()) == ["esjax.common.files -> esjax.run.loop"]


def test_imports_only_go_down_the_layers():
    graph, layer = import_graph(), layers()
    assert layer["esjax.common.errors"] == 0 and layer["esjax.cli.commands"] == max(layer.values())
    assert upward_imports(graph, layer) == [], "docs/architecture.md's layers are ordered bottom up"


METHOD_NAMES = {"es", "grpo"}
METHOD_HOMES = ("esjax/es/", "esjax/grpo/", "esjax/methods/")


def test_no_module_outside_the_methods_branches_on_a_method_name():
    """``x == "es"``-style comparisons (and ``in`` tests against method names) appear only in es/, grpo/ and
    methods/: everything else asks the method's registered description."""
    found = []
    for path in PACKAGE.rglob("*.py"):
        rel = str(path.relative_to(ROOT))
        if rel.startswith(METHOD_HOMES):
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Compare):
                literals = {c.value for c in [node.left, *node.comparators] if isinstance(c, ast.Constant)}
                literals |= {e.value for c in node.comparators if isinstance(c, (ast.Tuple, ast.Set, ast.List))
                             for e in c.elts if isinstance(e, ast.Constant)}
                if literals & METHOD_NAMES:
                    found.append(f"{rel}:{node.lineno}")
    assert not found, f"branches on a method name outside the methods: {found}"
