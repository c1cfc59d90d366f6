"""The import-linter contracts in pyproject.toml hold, and they fail when a forbidden import appears."""

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
LINT_IMPORTS = Path(sys.executable).parent / "lint-imports"


def _lint_imports(cwd: Path, pythonpath: Path | None = None) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    env.pop("PYTHONPATH", None)
    if pythonpath is not None:
        env["PYTHONPATH"] = str(pythonpath)
    return subprocess.run(
        [str(LINT_IMPORTS), "--no-cache"], cwd=cwd, env=env, capture_output=True, text=True, timeout=120
    )


def test_contracts_are_kept():
    result = _lint_imports(REPO)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "0 broken" in result.stdout


@pytest.mark.parametrize(
    ("module", "line", "contract"),
    [
        ("sdk/_probe.py", "import torch", "sdk stands alone"),
        ("sdk/_probe.py", "import fastapi", "sdk stands alone"),
        ("sdk/_probe.py", "import loraledger.runtime", "sdk stands alone"),
        ("kernels/_probe.py", "import loraledger.sdk", "kernels import only torch and triton"),
        ("agents/_probe.py", "import torch", "agents import sdk and langchain-core only"),
        ("sdk/_probe.py", "import loraledger.agents", "layers"),
    ],
)
def test_a_forbidden_import_breaks_a_contract(tmp_path, module, line, contract):
    # Lint a copy of the package with one bad module added; PYTHONPATH puts the copy ahead of the
    # editable install, and the copied pyproject.toml carries the same contracts.
    root = tmp_path / "src" / "loraledger"
    keep_py = shutil.ignore_patterns("__pycache__", "artifacts")
    for top in ("sdk", "runtime", "kernels", "agents"):
        shutil.copytree(REPO / top, root / top, ignore=keep_py)
    shutil.copy(REPO / "__init__.py", root / "__init__.py")
    shutil.copy(REPO / "pyproject.toml", tmp_path / "pyproject.toml")
    (root / module).write_text(f'"""Probe."""\n\n{line}\n')

    result = _lint_imports(tmp_path, pythonpath=tmp_path / "src")

    assert result.returncode != 0, result.stdout
    # A contract with ignored imports reports "BROKEN (1 ignored import)".
    broken = [text for text in result.stdout.splitlines() if " BROKEN" in text]
    assert any(text.startswith(contract) for text in broken), result.stdout
