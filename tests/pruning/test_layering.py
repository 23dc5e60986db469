"""The import rules of docs/architecture.md, read from the source: the library stays plain torch, and a method
module is a pure per-layer solver that knows nothing of models, data or the engine."""

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[2] / "pruning"
ORCHESTRATION = ("prefect", "mlflow", "dvc", "flows", "tasks", "lm_eval")


def imported_modules(path: Path) -> set[str]:
    modules = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            modules |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            modules |= {node.module} | {f"{node.module}.{alias.name}" for alias in node.names}
    return modules


@pytest.mark.parametrize("path", sorted(PACKAGE.rglob("*.py")), ids=lambda path: str(path.relative_to(PACKAGE)))
def test_the_library_imports_no_orchestration(path):
    allowed_lm_eval = path.name == "zero_shot.py"  # the zero-shot evaluator is lm-eval's HFLM by design
    found = [module for module in imported_modules(path)
             if module.split(".")[0] in ORCHESTRATION and not (allowed_lm_eval and module.startswith("lm_eval"))]
    assert not found, f"{path.relative_to(PACKAGE)} imports {found}"


@pytest.mark.parametrize("path", sorted((PACKAGE / "methods").glob("*.py")), ids=lambda path: path.name)
def test_a_method_module_imports_only_the_methods_package_errors_and_io(path):
    found = [module for module in imported_modules(path) if module.startswith("pruning")
             and not module.startswith(("pruning.methods", "pruning.errors", "pruning.io"))]
    assert not found, f"methods/{path.name} imports {found}: a method owns only its per-layer solve"


# The import diagram of docs/architecture.md, as data: each group of the library (a subpackage, or a top-level
# module) and the groups it may import. Everything else is a violation; the table itself has no cycle.
ALLOWED = {
    "errors": set(),
    "io": {"errors"},
    "machine": {"errors"},
    "methods": {"errors", "io"},
    "models": {"methods", "errors", "io"},
    "data": {"models", "errors", "io"},
    "blocks": {"models", "methods", "errors", "io"},
    "evaluation": {"blocks", "data", "models", "errors", "io"},
    "config": {"blocks", "methods", "models", "errors"},
    "store": {"blocks", "io"},
    "engine": {"blocks", "config", "machine", "methods", "models", "errors"},
    "record": {"blocks", "config", "data", "evaluation", "machine", "models", "errors", "io"},
    "card": {"record", "data", "evaluation"},
    "assemble": {"blocks", "models", "methods", "record", "io"},
    "speed": {"models", "machine", "record", "errors", "io"},
    "preflight": {"config", "data", "evaluation", "machine", "methods", "models", "errors", "io"},
    "steps": {"assemble", "blocks", "card", "config", "data", "engine", "evaluation", "machine", "methods", "models",
              "record", "store", "errors", "io"},
    "job": {"steps", "config", "evaluation", "machine", "methods", "preflight", "record", "store", "errors", "io"},
}


def group_of(path: Path) -> str:
    relative = path.relative_to(PACKAGE)
    return relative.parts[0] if len(relative.parts) > 1 else relative.stem


def library_groups(path: Path) -> set[str]:
    """The library groups a module imports (its own group left out; `pruning` itself is the version only)."""
    found = set()
    for module in imported_modules(path):
        parts = module.split(".")
        if parts[0] == "pruning" and len(parts) > 1 and parts[1] in ALLOWED:
            found.add(parts[1])
    return found - {group_of(path)}


LIBRARY_MODULES = [path for path in sorted(PACKAGE.rglob("*.py")) if path.name != "__init__.py"
                   or path.parent != PACKAGE]


@pytest.mark.parametrize("path", LIBRARY_MODULES, ids=lambda path: str(path.relative_to(PACKAGE)))
def test_a_module_imports_only_what_the_architecture_diagram_allows_its_group(path):
    group = group_of(path)
    assert group in ALLOWED, f"{group} is in no layer of docs/architecture.md's diagram: add it there and here"
    assert library_groups(path) <= ALLOWED[group], \
        f"{path.relative_to(PACKAGE)} imports {sorted(library_groups(path) - ALLOWED[group])}"


def test_no_two_groups_import_each_other_even_through_others():
    """The groups' actual imports form no cycle (today's code, not only the table)."""
    edges: dict[str, set[str]] = {group: set() for group in ALLOWED}
    for path in LIBRARY_MODULES:
        edges[group_of(path)] |= library_groups(path)

    def reaches(start: str, goal: str, seen: set[str]) -> bool:
        return any(step == goal or (step not in seen and reaches(step, goal, seen | {step})) for step in edges[start])

    cycles = [group for group in edges if reaches(group, group, set())]
    assert not cycles, f"import cycles through {cycles}"


TASKS = PACKAGE.parent / "tasks"


@pytest.mark.parametrize("path", sorted(TASKS.glob("*.py")), ids=lambda path: path.name)
def test_a_task_module_wraps_library_steps_and_never_imports_the_flows(path):
    found = [module for module in imported_modules(path) if module.split(".")[0] == "flows"]
    assert not found, f"tasks/{path.name} imports {found}"
