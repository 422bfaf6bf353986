"""The code's layout keeps its architecture: no import cycles, one direction of dependency between
the library's floors, nothing of ComfyUI inside the library, and the nodes on its public names.

Imports are read from the source (every import statement: at the top, inside functions and under
``TYPE_CHECKING``), so a cycle is caught whether or not it would fail at run time.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from conftest import ROOT

# The library's floors, lowest first: a module imports from its own floor or a lower one (type
# hints under TYPE_CHECKING aside: the controls annotate the model they are handed).
FLOORS = {"utils": 0, "kernels": 1, "controls": 2, "network": 3, "run": 4, "training": 5, "evaluation": 5,
          "release": 5, "commands": 6, "__main__": 7, "": 8}
HOST_MODULES = ("comfy", "comfy_api", "comfy_execution", "folder_paths", "server", "aiohttp", "nodes")
MOST_MAMBAST_MODULES_FOR_NODES = 3
MOST_MODULES_DIRECTLY_IN_MAMBAST = 12


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def project_modules() -> dict[str, Path]:
    paths = [*(ROOT / "mambast").rglob("*.py"), *(ROOT / "nodes").rglob("*.py")]
    return {module_name(path): path for path in paths if "__pycache__" not in path.parts}


def _under_type_checking(node: ast.AST, parents: dict[ast.AST, ast.AST]) -> bool:
    while node in parents:
        node = parents[node]
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            return True
    return False


def imports_of(name: str, path: Path, modules: dict[str, Path]) -> list[tuple[str, bool]]:
    """(imported module, only for type hints) for every import statement of a module; names
    imported from a package that are its submodules count as imports of those submodules."""
    tree = ast.parse(path.read_text(), str(path))
    parents = {child: parent for parent in ast.walk(tree) for child in ast.iter_child_nodes(parent)}
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = []
    for node in ast.walk(tree):
        typing_only = _under_type_checking(node, parents)
        if isinstance(node, ast.Import):
            found += [(alias.name, typing_only) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                source = ".".join(base + ([node.module] if node.module else []))
            else:
                source = node.module or ""
            for alias in node.names:
                submodule = f"{source}.{alias.name}" if source else alias.name
                found.append((submodule if submodule in modules else source, typing_only))
    return found


def project_graph(include_type_hints: bool = True) -> dict[str, set[str]]:
    modules = project_modules()
    graph = {}
    for name, path in modules.items():
        graph[name] = {target for target, typing_only in imports_of(name, path, modules)
                       if target in modules and target != name and (include_type_hints or not typing_only)}
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """One cycle per strongly connected group of modules (Tarjan's algorithm)."""
    index, low, stack, on_stack, found = {}, {}, [], set(), []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for target in sorted(graph[node]):
            if target not in index:
                visit(target)
                low[node] = min(low[node], low[target])
            elif target in on_stack:
                low[node] = min(low[node], index[target])
        if low[node] == index[node]:
            group = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                group.append(member)
                if member == node:
                    break
            if len(group) > 1:
                found.append(sorted(group))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return found


def floor_of(module: str) -> int:
    parts = module.split(".")
    return FLOORS[parts[1] if len(parts) > 1 else ""]


def test_the_cycle_finder_finds_a_cycle_of_three():
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert cycles({"a": {"b"}, "b": set()}) == []


def test_no_import_cycles_among_the_projects_modules_type_hints_included():
    found = cycles(project_graph(include_type_hints=True))
    assert not found, "import cycles: " + "; ".join(" <-> ".join(group) for group in found)


def test_each_library_module_imports_from_its_own_floor_or_below():
    graph = project_graph(include_type_hints=False)
    upward = [f"{source} -> {target}" for source, targets in sorted(graph.items()) if source.startswith("mambast")
              for target in sorted(targets) if target.startswith("mambast") and floor_of(target) > floor_of(source)]
    assert not upward, "imports against the floors " + str(FLOORS) + ": " + ", ".join(upward)


def test_every_library_folder_has_a_floor():
    folders = {path.name for path in (ROOT / "mambast").iterdir() if (path / "__init__.py").exists()}
    assert folders <= set(FLOORS), f"give {sorted(folders - set(FLOORS))} a floor in FLOORS"


def test_the_library_never_imports_comfyui():
    modules = project_modules()
    found = [f"{name} imports {target}" for name, path in sorted(modules.items()) if name.startswith("mambast")
             for target, _ in imports_of(name, path, modules) if target.split(".")[0] in HOST_MODULES]
    assert not found, found


def test_the_nodes_use_few_library_modules():
    graph = project_graph()
    used = sorted({target for source, targets in graph.items() if source.startswith("nodes")
                   for target in targets if target.startswith("mambast")})
    assert len(used) <= MOST_MAMBAST_MODULES_FOR_NODES, used


def test_the_library_folder_holds_few_modules_directly():
    direct = sorted(path.name for path in (ROOT / "mambast").glob("*.py"))
    assert len(direct) <= MOST_MODULES_DIRECTLY_IN_MAMBAST, direct


@pytest.mark.parametrize("source", ["from .. import build", "from ..network import loading"])
def test_an_import_from_a_package_counts_its_submodules(tmp_path, source):
    written = tmp_path / "trainer.py"
    written.write_text(source + "\n")
    targets = [target for target, _ in imports_of("mambast.training.trainer", written, project_modules())]
    assert targets == (["mambast"] if "build" in source else ["mambast.network.loading"])
