"""quant/ is pure tensor math: its modules import nothing from the model side (no import cycle),
and no module hides an import cycle in a function body."""
import ast
from pathlib import Path

PKG = Path(__file__).resolve().parent.parent / "dnncompress"


def _relative_imports(path: Path):
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.level:
            yield node.level, node.module or ""


def test_quant_imports_only_errors_registry_and_itself():
    for path in sorted((PKG / "quant").glob("*.py")):
        for level, module in _relative_imports(path):
            if level == 1:
                continue  # within quant/
            assert module.split(".")[0] in ("errors", "registry"), f"{path.name} imports ..{module}"


def test_surgery_imports_quant_at_the_top():
    tree = ast.parse((PKG / "surgery.py").read_text())
    nested = [n for f in ast.walk(tree) if isinstance(f, ast.FunctionDef) for n in ast.walk(f) if isinstance(n, ast.ImportFrom)]
    assert not nested, "surgery.py has function-local imports"
