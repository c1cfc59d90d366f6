"""The built wheel installs into a fresh venv with every subpackage, module and contract artifact."""

import json
import os
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest

pytestmark = [pytest.mark.integration, pytest.mark.slow]

REPO = Path(__file__).resolve().parents[2]
SUBPACKAGE_DIRS = ("sdk", "runtime", "kernels", "agents")
IMPORTS = ("loraledger", "loraledger.sdk", "loraledger.sdk.chain", "loraledger.runtime", "loraledger.kernels", "loraledger.agents")


def _run(*args: str, cwd: Path) -> str:
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    result = subprocess.run(args, cwd=cwd, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, f"{args}\n{result.stdout}\n{result.stderr}"
    return result.stdout


def _repo_files() -> set[str]:
    """Paths, relative to the installed `loraledger/`, of the modules and artifacts the wheel must ship."""
    files = {p.name for p in REPO.glob("*.py")}
    for top in SUBPACKAGE_DIRS:
        files |= {str(p.relative_to(REPO)) for p in (REPO / top).rglob("*.py") if "__pycache__" not in p.parts}
    files |= {str(p.relative_to(REPO)) for p in (REPO / "sdk/chain/artifacts").glob("*.json")}
    return files


@pytest.fixture(scope="module")
def installed(tmp_path_factory) -> Path:
    """A fresh venv holding only the wheel; dependencies come from this venv through a .pth file."""
    tmp = tmp_path_factory.mktemp("wheel")
    # Build from a copy so the build/ and egg-info folders land outside the shared work tree.
    src = tmp / "src"
    shutil.copytree(
        REPO,
        src,
        ignore=shutil.ignore_patterns(
            ".git", ".venv", "node_modules", "build", "dist", "*.egg-info", "__pycache__", ".*_cache", ".hypothesis"
        ),
    )
    _run(sys.executable, "-m", "build", "--wheel", "--no-isolation", "--outdir", str(tmp / "dist"), ".", cwd=src)
    (wheel,) = (tmp / "dist").glob("loraledger-*.whl")

    venv = tmp / "venv"
    _run(sys.executable, "-m", "venv", "--without-pip", str(venv), cwd=tmp)
    python = venv / "bin" / "python"
    _run(sys.executable, "-m", "pip", "--python", str(python), "install", "--quiet", "--no-deps", "--no-index", str(wheel), cwd=tmp)

    # Plain paths in a .pth are appended to sys.path without running that folder's own .pth files,
    # so the editable install's finder stays out and `loraledger` can only come from the wheel.
    site = Path(_run(str(python), "-c", "import sysconfig; print(sysconfig.get_path('purelib'))", cwd=tmp).strip())
    deps = sorted({sysconfig.get_path("purelib"), sysconfig.get_path("platlib")})
    (site / "outer_deps.pth").write_text("".join(f"{path}\n" for path in deps))
    return python


def test_wheel_imports_resolve_inside_the_new_venv(installed, tmp_path):
    code = f"import importlib, json; print(json.dumps({{n: importlib.import_module(n).__file__ for n in {IMPORTS!r}}}))"
    files = json.loads(_run(str(installed), "-I", "-c", code, cwd=tmp_path).splitlines()[-1])
    venv = installed.parent.parent
    for name, file in files.items():
        assert Path(file).is_relative_to(venv), f"{name} imported from {file}, not from the wheel"


def test_wheel_ships_every_module_and_artifact(installed, tmp_path):
    code = "import loraledger; print(loraledger.__file__)"
    package = Path(_run(str(installed), "-I", "-c", code, cwd=tmp_path).strip()).parent
    assert (package / "sdk/chain/__init__.py").is_file()
    shipped = {
        str(p.relative_to(package))
        for p in package.rglob("*")
        if p.is_file() and "__pycache__" not in p.parts and p.suffix in {".py", ".json"}
    }
    assert shipped == _repo_files()
