"""The `loraledger` command line: `loraledger chain` starts a local dev chain with the contracts deployed."""

from __future__ import annotations

import argparse
import logging
import signal
import sys
import threading
from collections.abc import Sequence
from pathlib import Path

logger = logging.getLogger(__name__)


def _cmd_chain(args: argparse.Namespace) -> int:
    from loraledger.sdk.chain.devchain import DEV_OPEN_PER_ACCOUNT, start_dev_chain
    from loraledger.sdk.chain.errors import ChainError

    if args.accounts < 1:
        print("error: --accounts must be at least 1", file=sys.stderr)
        return 2
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    try:
        dev = start_dev_chain(
            host=args.host,
            port=args.port,
            accounts=args.accounts,
            use_anvil=args.anvil,
            deployments_path=args.deployments,
        )
    except (ChainError, OSError) as exc:
        print(f"error: could not start the dev chain: {exc}", file=sys.stderr)
        return 1
    try:
        d = dev.contracts.deployments
        print(f"loraledger dev chain ({'anvil' if args.anvil else 'embedded EVM'})")
        print(f"RPC URL:   {dev.rpc_url}")
        print(f"chain id:  {d.chain_id}")
        for name, address in d.contracts.items():
            print(f"{name + ':':<17}{address}")
        print(f"deployments written to {args.deployments}")
        print(f"\naccounts (ETH and {DEV_OPEN_PER_ACCOUNT // 10**18:,} OPEN each; account 0 deployed the contracts):")
        for i, account in enumerate(dev.accounts):
            print(f"({i}) {account.address}  key {account.key.to_0x_hex()}")
        print("\nthese keys are public: never use them on a real network. Ctrl-C stops the chain.", flush=True)
        stop.wait()
    finally:
        dev.close()
        print("dev chain stopped", flush=True)
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="loraledger",
        description="loraledger: pay-per-call LoRA adapters for autonomous agents.",
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="log debug messages")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    chain = commands.add_parser(
        "chain",
        help="start a local dev chain with the contracts deployed",
        description="Start a local dev chain (the embedded EVM over JSON-RPC, or anvil), deploy the contracts, "
        "fund the dev accounts with ETH and OPEN, and write the deployments file. Runs until stopped.",
    )
    chain.add_argument("--host", default="127.0.0.1", help="address to listen on (default: %(default)s)")
    chain.add_argument("--port", type=int, default=8545, help="JSON-RPC port (default: %(default)s)")
    chain.add_argument("--accounts", type=int, default=10, help="dev accounts to fund (default: %(default)s)")
    chain.add_argument(
        "--deployments",
        type=Path,
        default=Path("deployments.json"),
        help="where to write the deployments file (default: %(default)s)",
    )
    chain.add_argument("--anvil", action="store_true", help="run anvil (from npm) instead of the embedded EVM")
    chain.set_defaults(run=_cmd_chain)

    from .datanets.cli import register as register_datanets
    from .demo.cli import register as register_demo
    from .factory.cli import register as register_factory
    from .server.cli import register as register_serve

    register_serve(commands)
    register_datanets(commands)
    register_factory(commands)
    register_demo(commands)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.WARNING,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    return args.run(args)


if __name__ == "__main__":
    sys.exit(main())
