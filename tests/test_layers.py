"""The import rules: import-linter's contracts (.importlinter: the rooms of app/ and their order, no cycles,
no torch where a robot PC runs) and the two rules it cannot express, checked on the source."""

import ast
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
LINT_IMPORTS = Path(sys.executable).parent / "lint-imports"


def lint_imports() -> subprocess.CompletedProcess:
    return subprocess.run(
        [str(LINT_IMPORTS), "--config", str(ROOT / ".importlinter"), "--no-cache"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )


def test_the_import_contracts_hold():
    run = lint_imports()
    assert run.returncode == 0, run.stdout[-4000:] + run.stderr[-2000:]
    assert "0 broken" in run.stdout


def test_the_contracts_catch_an_upward_import_and_a_cycle():
    probe = ROOT / "app" / "runtime" / "_layer_probe_tmp.py"
    probe.write_text("def f():\n    from app.cli.main import main\n\n    return main\n")
    try:
        run = lint_imports()
    finally:
        probe.unlink()
    assert run.returncode != 0
    assert "app.runtime._layer_probe_tmp -> app.cli.main" in run.stdout


def imports_of(path: Path) -> list[tuple[int, str]]:
    tree = ast.parse(path.read_text(), filename=str(path))
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(node.lineno, a.name) for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            found.append((node.lineno, node.module))
    return found


def test_only_the_recorder_touches_drivers():
    # The store modules stay numpy + zarr, so a training box reads datasets without robot code.
    problems = [
        f"{path.relative_to(ROOT)}:{line} imports {module}"
        for path in sorted((ROOT / "recording").rglob("*.py"))
        if not path.name.startswith("recorder")
        for line, module in imports_of(path)
        if module.split(".")[0] == "drivers"
    ]
    assert not problems, "only recording/recorder*.py may import drivers/:\n" + "\n".join(problems)


def test_datasets_is_not_a_package():
    # A package named `datasets` would hide Hugging Face's `datasets`, which transformers and lerobot import.
    assert not (ROOT / "datasets" / "__init__.py").exists()
