"""The dependency rule of DESIGN.md §2, checked on the source: imports point downward only.

app → {recording, xr0, drivers};  recording → drivers (the recorder only);  xr0 → recording;
drivers and the store are leaves. drivers/ never imports torch, zarr or rerun; xr0/ never imports a
hardware SDK. Lazy imports inside functions count too.
"""

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PROJECT = ("app", "drivers", "recording", "xr0")
ALLOWED = {
    "app": {"app", "drivers", "recording", "xr0"},
    "drivers": {"drivers"},
    "recording": {"recording", "drivers"},
    "xr0": {"xr0", "recording"},
}
FORBIDDEN_THIRD_PARTY = {
    "drivers": {"torch", "zarr", "rerun", "transformers"},
    "recording": {"torch", "rerun", "transformers", "mujoco", "dynamixel_sdk", "pyrealsense2"},
    "xr0": {"dynamixel_sdk", "pyrealsense2", "serial", "mujoco", "rerun", "cv2"},
}


def imports_of(path: Path) -> list[tuple[int, str]]:
    tree = ast.parse(path.read_text(), filename=str(path))
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(node.lineno, a.name) for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            found.append((node.lineno, node.module))
    return found


def violations(layer: str, path: Path) -> list[str]:
    out = []
    rel = path.relative_to(ROOT)
    for line, module in imports_of(path):
        top = module.split(".")[0]
        if top in PROJECT and top not in ALLOWED[layer]:
            out.append(f"{rel}:{line} imports {module}: {layer}/ may import only {sorted(ALLOWED[layer])}")
        if layer == "recording" and top == "drivers" and not path.name.startswith("recorder"):
            out.append(
                f"{rel}:{line} imports {module}: only the recorder may touch drivers/; the store stays numpy/zarr"
            )
        if top in FORBIDDEN_THIRD_PARTY.get(layer, ()):
            out.append(f"{rel}:{line} imports {module}: {layer}/ must not depend on {top}")
    return out


@pytest.mark.parametrize("layer", PROJECT)
def test_imports_point_downward(layer):
    files = sorted((ROOT / layer).rglob("*.py"))
    assert files or layer in ("recording", "xr0"), f"no sources found for {layer}/"
    problems = [v for f in files for v in violations(layer, f)]
    assert not problems, "layer rule broken:\n" + "\n".join(problems)


def test_the_checker_catches_a_violation(tmp_path):
    bad = ROOT / "drivers" / "_layer_probe_tmp.py"
    bad.write_text("def f():\n    import torch\n    from app.config import AppConfig\n")
    try:
        problems = violations("drivers", bad)
    finally:
        bad.unlink()
    assert any("must not depend on torch" in p for p in problems)
    assert any("imports app.config" in p for p in problems)


def test_datasets_is_not_a_package():
    # A package named `datasets` would hide Hugging Face's `datasets`, which transformers and lerobot import.
    assert not (ROOT / "datasets" / "__init__.py").exists()
