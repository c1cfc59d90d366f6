"""The committed contract artifacts are exactly what the sources compile to."""

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


@pytest.mark.integration
@pytest.mark.slow
def test_committed_artifacts_match_a_rebuild():
    if shutil.which("node") is None or not (REPO / "node_modules" / "solc").is_dir():
        pytest.fail("node and the npm solc package are needed: run `make test` (it runs npm ci)")
    proc = subprocess.run(
        [sys.executable, str(REPO / "contracts" / "script" / "build.py"), "--check"],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr
    assert "artifacts match the sources" in proc.stdout
