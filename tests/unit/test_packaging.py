"""The distribution's shape: the SDK stays torch-free and the wheel lists every subpackage and data file."""

import fnmatch
import json
import subprocess
import sys
import tomllib
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
SUBPACKAGE_DIRS = ("sdk", "runtime", "kernels", "agents")
HEAVY_MODULES = ("torch", "triton", "fastapi", "langchain_core")


def _pyproject() -> dict:
    with open(REPO / "pyproject.toml", "rb") as f:
        return tomllib.load(f)


def _package_dirs() -> dict[str, Path]:
    """Dotted name → folder, for every folder under the subpackage roots that holds Python code."""
    found = {"loraledger": REPO}
    for top in SUBPACKAGE_DIRS:
        for path in [REPO / top, *sorted((REPO / top).rglob("*"))]:
            if path.is_dir() and path.name != "__pycache__" and any(path.glob("*.py")):
                found[".".join(["loraledger", *path.relative_to(REPO).parts])] = path
    return found


def test_sdk_import_loads_no_heavy_modules(tmp_path):
    # Import every sdk module, not only the package, so a deep `import torch` is caught too.
    code = (
        "import importlib, json, pkgutil, sys\n"
        "import loraledger.sdk as sdk\n"
        "for info in pkgutil.walk_packages(sdk.__path__, 'loraledger.sdk.'):\n"
        "    importlib.import_module(info.name)\n"
        f"print(json.dumps(sorted(m for m in {HEAVY_MODULES!r} if m in sys.modules)))\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout.splitlines()[-1]) == []


def test_every_package_folder_is_listed_in_pyproject():
    listed = set(_pyproject()["tool"]["setuptools"]["packages"])
    dirs = _package_dirs()
    without_init = sorted(name for name, path in dirs.items() if not (path / "__init__.py").is_file())
    assert without_init == [], "folders with Python modules but no __init__.py (the wheel would skip them)"
    assert sorted(set(dirs) - listed) == [], "add these to [tool.setuptools] packages in pyproject.toml"
    assert sorted(listed - set(dirs)) == [], "pyproject.toml lists packages that do not exist"


def test_package_data_covers_contract_artifacts():
    patterns = _pyproject()["tool"]["setuptools"]["package-data"]["loraledger.sdk.chain"]
    artifacts = sorted(p.name for p in (REPO / "sdk/chain/artifacts").glob("*.json"))
    for name in [*artifacts, "Example.json"]:
        assert any(fnmatch.fnmatch(f"artifacts/{name}", pattern) for pattern in patterns), name
