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
