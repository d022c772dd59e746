"""The package's layout: imports only go down the floors of ``bbvae/__init__.py``'s docstring.

Every ``import`` of a bbvae module (at module level, inside functions, under TYPE_CHECKING) is
read with ``ast``; a module may import from its own floor or a lower one. A second test imports
every module on its own, in a fresh interpreter state, so that an import cycle shows up as the
ImportError a user would meet.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "bbvae"

# Floors, lowest first (the same table as bbvae/__init__.py's docstring). The most specific prefix
# wins: ``bbvae.data.batching`` is on floor 0 although ``bbvae.data`` is on floor 4.
FLOORS: dict[str, int] = {
    "bbvae._validation": 0,
    "bbvae._math": 0,
    "bbvae.base": 0,
    "bbvae.checkpoint": 0,
    "bbvae.data.batching": 0,
    "bbvae.models": 1,
    "bbvae.models_layered": 1,
    "bbvae.evaluation": 1,
    "bbvae.diagnostics": 1,
    "bbvae.flows": 1,
    "bbvae.sequential": 2,
    "bbvae.losses": 3,
    "bbvae.data": 4,
    "bbvae.training": 5,
    "bbvae.distributed": 5,
    "bbvae.estimator_base": 6,
    "bbvae.estimator": 6,
    "bbvae.estimator_data": 6,
    "bbvae.sequential.estimator": 6,
    "bbvae.sequential.estimator_build": 6,
    "bbvae.sequential.estimator_data": 6,
    "bbvae.sequential.estimator_sampling": 6,
    "bbvae.pretrained": 6,
    "bbvae.cli": 7,
    "bbvae.plots": 7,
    "bbvae.__main__": 7,
    "bbvae.play": 7,
    "bbvae": 3,  # the top package's __init__: eager imports up to the losses, the rest on first use
}


def _modules() -> dict[str, Path]:
    out = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = list(path.relative_to(ROOT).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        out[".".join(parts)] = path
    return out


MODULES = _modules()


def floor_of(name: str) -> int:
    parts = name.split(".")
    for i in range(len(parts), 0, -1):
        prefix = ".".join(parts[:i])
        if prefix in FLOORS:
            return FLOORS[prefix]
    raise AssertionError(f"{name} has no floor: add it to FLOORS here and to bbvae/__init__.py's docstring")


def _imports(name: str, path: Path) -> list[tuple[int, str]]:
    """(line, imported bbvae module) for every import in the file, relative ones resolved."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    is_package = path.name == "__init__.py"
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
            found += [(node.lineno, n) for n in names if n.split(".")[0] == "bbvae"]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = name.split(".") if is_package else name.split(".")[:-1]
                base = base[: len(base) - (node.level - 1)]
                module = ".".join(base + ([node.module] if node.module else []))
            else:
                module = node.module or ""
            if module.split(".")[0] != "bbvae":
                continue
            for alias in node.names:  # `from bbvae.x import y` imports the module bbvae.x.y if there is one
                sub = f"{module}.{alias.name}"
                found.append((node.lineno, sub if sub in MODULES else module))
    return found


def test_every_module_has_a_floor():
    for name in MODULES:
        floor_of(name)


def test_imports_go_down_the_floors():
    upward = []
    for name, path in MODULES.items():
        mine = floor_of(name)
        for line, target in _imports(name, path):
            if target not in MODULES:
                upward.append(f"{path.relative_to(ROOT)}:{line} imports {target}, which does not exist")
            elif floor_of(target) > mine:
                where = f"{path.relative_to(ROOT)}:{line} (floor {mine})"
                upward.append(f"{where} imports {target} (floor {floor_of(target)})")
    assert not upward, "imports that go up a floor:\n" + "\n".join(upward)


def test_the_check_sees_an_upward_import(tmp_path):
    # The checker itself: a loss importing the trainer must be reported.
    fake = tmp_path / "fake.py"
    fake.write_text("from bbvae.training import Trainer\n\ndef f():\n    from bbvae.cli import main\n")
    targets = [t for _, t in _imports("bbvae.losses.fake", fake)]
    assert targets == ["bbvae.training", "bbvae.cli"]
    assert all(floor_of(t) > floor_of("bbvae.losses.fake") for t in targets)


def test_every_module_imports_on_its_own():
    # One subprocess; before each import every bbvae module is forgotten (torch stays loaded).
    code = (
        "import importlib, sys, traceback\n"
        f"names = {sorted(set(MODULES) - {'bbvae.__main__'})!r}\n"  # __main__ runs the CLI
        "bad = []\n"
        "for name in names:\n"
        "    for key in [k for k in sys.modules if k == 'bbvae' or k.startswith('bbvae.')]:\n"
        "        del sys.modules[key]\n"
        "    try:\n"
        "        importlib.import_module(name)\n"
        "    except Exception:\n"
        "        bad.append(name + ': ' + traceback.format_exc(limit=-3))\n"
        "print('\\n'.join(bad))\n"
        "sys.exit(1 if bad else 0)\n"
    )
    command = [sys.executable, "-c", code]
    result = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.parametrize("limit", [450])
def test_no_module_is_a_mansion(limit):
    # Small rooms: one job per module (STYLE: about 400 lines at most).
    big = {name: n for name, path in MODULES.items() if (n := len(path.read_text().splitlines())) > limit}
    assert not big, f"modules over {limit} lines (split them along their responsibilities): {big}"
