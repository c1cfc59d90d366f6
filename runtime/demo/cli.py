"""`loraledger demo`: the main job."""

from __future__ import annotations

import argparse
import signal
import sys
import threading
from pathlib import Path

__all__ = ["register"]


def register(commands: argparse._SubParsersAction) -> None:
    demo = commands.add_parser(
        "demo",
        help="run the whole system end to end on CPU: datanets, training, a paying agent, settlement",
        description="Build a tiny base model, create three datanets with several contributors each, train and "
        "publish one LoRA adapter per datanet with ModelFactory, serve them on the embedded chain, and let a "
        "LangChain agent with a budget pay for answers. Prints the answers, costs, attribution, the settled split, "
        "every party's balance and the contributors' claims, and verifies the receipts and the anchored trace. "
        "CPU only, no downloads, about a minute.",
    )
    demo.add_argument("--keep-running", action="store_true", help="leave the runtime and its chain up until Ctrl-C")
    demo.add_argument("--port", type=int, default=0, help="runtime port (default: a free one)")
    demo.add_argument("--dir", type=Path, default=None, help="keep the models, ledger and trace here (default: temp)")
    demo.add_argument("--epochs", type=int, default=100, help="training epochs per adapter (default: %(default)s)")
    demo.set_defaults(run=_cmd_demo)


def _cmd_demo(args: argparse.Namespace) -> int:
    try:
        import langchain_core  # noqa: F401  (the demo's agent is a LangChain agent)
        import torch  # noqa: F401
    except ImportError as exc:
        print(f"error: the demo needs the runtime and langchain extras ({exc.name} is missing): "
              "pip install 'loraledger[runtime,langchain]'", file=sys.stderr)  # fmt: skip
        return 1
    from .run import DemoConfig, run_demo

    stop = threading.Event()

    def wait() -> None:
        for sig in (signal.SIGINT, signal.SIGTERM):
            signal.signal(sig, lambda *_: stop.set())
        stop.wait()

    config = DemoConfig(workdir=args.dir, port=args.port, keep_running=args.keep_running, epochs=args.epochs)
    try:
        result = run_demo(config, write=lambda line: print(line, flush=True), wait=wait)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    return 0 if all(result.checks.values()) else 1
