"""Compiles contracts/src and contracts/test with the npm solc (solc-js) and writes ABI + bytecode artifacts.

`python contracts/script/build.py` (what `make contracts` runs) rewrites the committed artifacts:
sdk/chain/artifacts/<Name>.json for the contracts in src/ (shipped in the wheel) and
tests/artifacts/<Name>.json for the test-only contracts in test/. `--check` rebuilds into memory
and exits non-zero when any committed artifact differs from the rebuild.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
CONTRACTS = REPO / "contracts"
OUT_DIRS = {"src": REPO / "sdk" / "chain" / "artifacts", "test": REPO / "tests" / "artifacts"}

SETTINGS = {
    "evmVersion": "cancun",
    "viaIR": True,
    "optimizer": {"enabled": True, "runs": 10_000},
    "outputSelection": {"*": {"*": ["abi", "evm.bytecode.object", "evm.deployedBytecode.object"]}},
}


def _sources() -> dict[str, dict[str, str]]:
    sources = {}
    for folder in OUT_DIRS:
        for path in sorted((CONTRACTS / folder).glob("*.sol")):
            sources[f"{folder}/{path.name}"] = {"content": path.read_text()}
    return sources


def compile_all() -> dict[Path, str]:
    """Returns {artifact path: file text} for every contract defined in src/ and test/."""
    request = {"language": "Solidity", "sources": _sources(), "settings": SETTINGS}
    proc = subprocess.run(
        ["node", str(CONTRACTS / "script" / "solc.mjs")],
        input=json.dumps(request),
        capture_output=True,
        text=True,
        check=False,
    )
    if proc.returncode != 0:
        raise SystemExit(f"solc failed (run `npm ci` first?):\n{proc.stderr}")
    result = json.loads(proc.stdout)
    output = result["output"]
    errors = [e for e in output.get("errors", []) if e["severity"] == "error"]
    for e in output.get("errors", []):
        print(e["formattedMessage"], file=sys.stderr)
    if errors:
        raise SystemExit("compilation failed")
    artifacts = {}
    for source_name, contracts in output["contracts"].items():
        folder = source_name.split("/", 1)[0]
        if folder not in OUT_DIRS:
            continue
        for name, compiled in contracts.items():
            artifact = {
                "contractName": name,
                "sourceName": f"contracts/{source_name}",
                "compiler": {"name": "solc-js", "version": result["version"], "settings": SETTINGS},
                "abi": compiled["abi"],
                "bytecode": "0x" + compiled["evm"]["bytecode"]["object"],
                "deployedBytecode": "0x" + compiled["evm"]["deployedBytecode"]["object"],
            }
            text = json.dumps(artifact, indent=1, sort_keys=True) + "\n"
            artifacts[OUT_DIRS[folder] / f"{name}.json"] = text
    return artifacts


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="fail if committed artifacts differ from a rebuild")
    args = parser.parse_args()
    artifacts = compile_all()
    stale = []
    for folder in OUT_DIRS.values():
        existing = set(folder.glob("*.json")) if folder.exists() else set()
        stale += [str(p.relative_to(REPO)) + " (no longer built)" for p in existing - set(artifacts)]
    for path, text in sorted(artifacts.items()):
        if not path.exists() or path.read_text() != text:
            stale.append(str(path.relative_to(REPO)))
    if args.check:
        if stale:
            print("artifacts differ from a rebuild (run `make contracts`):\n  " + "\n  ".join(stale), file=sys.stderr)
            return 1
        print(f"{len(artifacts)} artifacts match the sources")
        return 0
    for folder in OUT_DIRS.values():
        folder.mkdir(parents=True, exist_ok=True)
        for path in folder.glob("*.json"):
            if path not in artifacts:
                path.unlink()
    for path, text in artifacts.items():
        path.write_text(text)
    print(f"wrote {len(artifacts)} artifacts")
    return 0


if __name__ == "__main__":
    sys.exit(main())
