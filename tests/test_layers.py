"""Layering rules of the design doc: models/ free of Prefect and storage; torchvision guard."""

import ast
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
FORBIDDEN_IN_MODELS = {"prefect", "fsspec", "s3fs", "boto3", "duckdb", "pyarrow", "anthropic", "flows", "tasks"}


def _imports(path: Path) -> set[str]:
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module.split(".")[0])
    return names


def test_models_import_no_orchestration_storage_or_network():
    files = list((ROOT / "models").rglob("*.py"))
    assert files
    offenders = {str(f.relative_to(ROOT)): sorted(_imports(f) & FORBIDDEN_IN_MODELS) for f in files}
    assert {k: v for k, v in offenders.items() if v} == {}


def test_tasks_never_import_flows():
    offenders = [str(f.relative_to(ROOT)) for f in (ROOT / "tasks").rglob("*.py") if "flows" in _imports(f)]
    assert offenders == []


def test_torchvision_guard_lets_timm_and_grad_cam_import():
    import models  # noqa: F401  (runs the guard)
    import pytorch_grad_cam  # noqa: F401
    import timm
    import torch

    net = timm.create_model("resnet18", pretrained=False, in_chans=1, num_classes=3)
    assert net(torch.zeros(2, 1, 32, 32)).shape == (2, 3)


def test_no_module_imports_a_name_it_never_uses():
    """Dead imports are dead code (and a module that imports what it does not use loads more
    than it needs). Re-exports are listed in __all__; side-effect imports carry a noqa."""
    unused = []
    for path in sorted(p for folder in ("flows", "tasks", "models", "benchmarks", "tests")
                       for p in (ROOT / folder).rglob("*.py")):
        text = path.read_text()
        tree = ast.parse(text)
        imported = {}
        for node in ast.walk(tree):
            if isinstance(node, (ast.Import, ast.ImportFrom)):
                for alias in node.names:
                    name = alias.asname or (alias.name.split(".")[0] if isinstance(node, ast.Import) else alias.name)
                    imported[name] = node.lineno
        used = {node.id for node in ast.walk(tree) if isinstance(node, ast.Name)}
        exported = {elt.value for node in ast.walk(tree) if isinstance(node, ast.Assign)
                    for target in node.targets if isinstance(target, ast.Name) and target.id == "__all__"
                    for elt in node.value.elts}
        lines = text.splitlines()
        unused += [f"{path.relative_to(ROOT)}:{line} {name}" for name, line in imported.items()
                   if name not in used | exported | {"annotations"} and "noqa" not in lines[line - 1]
                   and f'"{name}' not in text and f"'{name}" not in text]  # names in string annotations
    assert unused == []


def test_the_product_imports_no_benchmark_and_the_benchmarks_no_test():
    """(Imports inside functions count: ast.walk sees them.)"""
    product = [f for layer in ("flows", "tasks", "models") for f in (ROOT / layer).rglob("*.py")]
    assert [str(f.relative_to(ROOT)) for f in product if _imports(f) & {"benchmarks", "tests"}] == []
    benchmarks = list((ROOT / "benchmarks").rglob("*.py"))
    assert benchmarks
    assert [str(f.relative_to(ROOT)) for f in benchmarks if "tests" in _imports(f)] == []


# Product functions only benchmarks call, each for a reason a user shares: the GPU script prints a
# preset's cost, the normal generator's training writes the shipped weights' format, and lineage
# (a row's source_uri) is the product's to read.
USED_BY_BENCHMARKS_ONLY = {"flops_per_call", "save_dit_safetensors", "split_source_uri"}


def test_no_product_function_is_there_only_for_the_benchmarks():
    product = {p: p.read_text() for folder in ("flows", "tasks", "models") for p in (ROOT / folder).rglob("*.py")}
    benchmarks = "\n".join(p.read_text() for p in (ROOT / "benchmarks").rglob("*.py"))
    leaked = []
    for path, text in product.items():
        for node in ast.parse(text).body:
            if isinstance(node, (ast.FunctionDef, ast.ClassDef)) and not node.name.startswith("_"):
                word = re.compile(rf"\b{re.escape(node.name)}\b")
                if sum(len(word.findall(t)) for t in product.values()) == 1 and word.search(benchmarks):
                    leaked.append(f"{path.relative_to(ROOT)}:{node.name}")
    assert sorted(name for name in leaked if name.split(":")[1] not in USED_BY_BENCHMARKS_ONLY) == []


def test_a_product_module_over_about_300_lines_says_why():
    """One job per module: a flows/, tasks/ or models/ module longer than ~300 lines states the
    reason in its docstring ("Longer than ~300 lines: ..."), or is split."""
    long = []
    for path in sorted(p for layer in ("flows", "tasks", "models") for p in (ROOT / layer).rglob("*.py")):
        lines = path.read_text().count("\n")
        doc = ast.get_docstring(ast.parse(path.read_text())) or ""
        if lines > 330 and "Longer than ~300 lines: " not in doc:
            long.append(f"{path.relative_to(ROOT)} ({lines} lines)")
    assert long == [], "split these or say why in their docstrings"
