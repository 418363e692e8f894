"""The house rules of toolkit/: packages by role imported one way, a docstring per package, short modules."""
import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1] / "toolkit"
# lowest first: a package imports only from itself and the packages before it
LAYERS = ["common", "sources", "model", "scoring", "training", "artifacts", "batch", "robustness", "distill", "<top>"]
MAX_LINES = 400


def _package(path: Path) -> str:
    rel = path.relative_to(ROOT)
    return rel.parts[0] if len(rel.parts) > 1 else "<top>"


def _imports(path: Path) -> "list[tuple[int, str]]":
    """Every toolkit module the file imports, at the top or inside a function."""
    found = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.append((node.lineno, node.module))
        elif isinstance(node, ast.Import):
            found += [(node.lineno, a.name) for a in node.names]
    return [(line, name) for line, name in found if name.split(".")[0] == "toolkit"]


def _modules():
    return sorted(p for p in ROOT.rglob("*.py") if "__pycache__" not in p.parts)


def test_every_package_is_a_layer_and_has_a_docstring():
    packages = {p.parent.name for p in ROOT.glob("*/__init__.py")}
    assert packages == set(LAYERS[:-1])
    for name in packages:
        doc = ast.get_docstring(ast.parse((ROOT / name / "__init__.py").read_text()))
        assert doc and len(doc) > 80, f"toolkit/{name}/__init__.py: say what the package holds"


@pytest.mark.parametrize("path", _modules(), ids=lambda p: str(p.relative_to(ROOT)))
def test_imports_go_one_way(path):
    mine = LAYERS.index(_package(path))
    for line, name in _imports(path):
        parts = name.split(".")
        if len(parts) < 2 or parts[1] == "kernels":
            continue  # the package root (__version__, api) and the kernels folder
        theirs = LAYERS.index(parts[1]) if parts[1] in LAYERS else LAYERS.index("<top>")
        assert theirs <= mine, f"{path.relative_to(ROOT)}:{line} imports {name}, a later layer"


def test_no_module_is_long():
    long = {str(p.relative_to(ROOT)): n for p in _modules() if (n := len(p.read_text().splitlines())) > MAX_LINES}
    assert not long, f"over {MAX_LINES} lines: {long}"


def test_every_adapter_choice_has_one_kind():
    from toolkit.common.choices import ADAPTERS
    from toolkit.model.adapter_kinds import KINDS

    assert tuple(KINDS) == ADAPTERS
