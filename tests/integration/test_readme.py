"""The README's code runs as written: its dev-chain example against a live `loraledger chain`."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

from .test_cli_chain import _start

REPO = Path(__file__).resolve().parents[2]

pytestmark = [pytest.mark.integration, pytest.mark.slow]


def readme_block(name: str) -> str:
    """The ```python block that follows the `<!-- readme-example: NAME ... -->` marker in README.md."""
    text = (REPO / "README.md").read_text()
    match = re.search(rf"<!-- readme-example: {re.escape(name)}\b.*?-->\s*```python\n(.*?)```", text, re.S)
    assert match, f"README.md has no python block marked readme-example: {name}"
    return match.group(1)


def test_readme_dev_chain_example_opens_a_channel_and_claims(tmp_path):
    script = tmp_path / "example.py"
    script.write_text(readme_block("dev-chain"))
    proc, deployments = _start(tmp_path)
    try:
        # The example reads ./deployments.json, as written by `loraledger chain` in the current folder.
        assert deployments == tmp_path / "deployments.json"
        run = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=120, cwd=tmp_path)
    finally:
        proc.terminate()
        proc.communicate(timeout=30)
    assert run.returncode == 0, run.stderr
    assert run.stdout.strip() == "deposited 5.0 OPEN, claimed 2.0 OPEN, operator earnings 2.0 OPEN"
