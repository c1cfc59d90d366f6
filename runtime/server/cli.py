"""`loraledger serve`: the runtime server."""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from pydantic import ValidationError

logger = logging.getLogger(__name__)

_HELP = {
    "model": "local Hugging Face folder of the base model (config.json, *.safetensors, tokenizer.json)",
    "adapters": "folder with one PEFT adapter per subfolder (the folder name is the adapter id)",
    "chain": "'embedded' (run the dev chain in this process, served at /rpc) or a JSON-RPC URL",
    "deployments": "deployments file of a JSON-RPC chain (written by `loraledger chain`)",
    "operator-key": "the operator's private key (0x-hex); default on the embedded chain: dev account 0",
    "host": "address to listen on (default 127.0.0.1)",
    "port": "port (default 8000)",
    "device": "cpu or cuda (default cpu)",
    "data-dir": "where the ledger lives (default .loraledger)",
    "default-price": "price per input and output token of adapters without loraledger.json (default 0: free)",
}


def register(commands: argparse._SubParsersAction) -> None:
    serve = commands.add_parser(
        "serve",
        help="serve a base model and its adapters with x402 payment per call",
        description="Serve an OpenAI-compatible API over one base model and many LoRA adapters, paid per call "
        "through x402 payment channels and settled on chain. Every option is also a LORALEDGER_* environment "
        "variable (e.g. LORALEDGER_OPERATOR_KEY); options given here win.",
        argument_default=argparse.SUPPRESS,
    )
    serve.add_argument("--model", type=Path, help=_HELP["model"])
    serve.add_argument("--adapters", type=Path, help=_HELP["adapters"])
    serve.add_argument("--chain", help=_HELP["chain"])
    serve.add_argument("--deployments", type=Path, help=_HELP["deployments"])
    serve.add_argument("--operator-key", help=_HELP["operator-key"])
    serve.add_argument("--host", help=_HELP["host"])
    serve.add_argument("--port", type=int, help=_HELP["port"])
    serve.add_argument("--device", help=_HELP["device"])
    serve.add_argument("--data-dir", type=Path, help=_HELP["data-dir"])
    serve.add_argument("--default-price", type=int, help=_HELP["default-price"])
    serve.add_argument("--max-unsettled", type=int, help="per channel: most owed before new calls wait (wei)")
    serve.add_argument("--settle-every-calls", type=int, help="settle after this many calls (default 1 embedded)")
    serve.add_argument("--settle-interval-s", type=float, help="settle at least this often (default 30)")
    serve.add_argument("--max-adapters", type=int, help="adapter slots on the device (default 8)")
    serve.add_argument("--max-lora-rank", type=int, help="largest adapter rank accepted (default 64)")
    serve.set_defaults(run=_cmd_serve)


def _cmd_serve(args: argparse.Namespace) -> int:
    from ..config import ServeSettings

    given = {k: v for k, v in vars(args).items() if k not in ("run", "command", "verbose")}
    try:
        settings = ServeSettings(**given)
    except ValidationError as exc:
        for err in exc.errors():
            where = ".".join(str(p) for p in err["loc"]).replace("_", "-")
            print(f"error: --{where}: {err['msg']}", file=sys.stderr)
        return 2
    import uvicorn

    from ..chain import connect
    from ..engine.engine import Engine
    from .app import Runtime, create_app

    try:
        engine = Engine.from_pretrained(
            settings.model, device=settings.device, max_adapters=settings.max_adapters,
            max_lora_rank=settings.max_lora_rank, max_num_seqs=settings.max_num_seqs,
        )  # fmt: skip
        chain = connect(settings)
    except (OSError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    runtime = Runtime(settings, engine, chain)
    adapters = [a.id for a in runtime.catalog.all()]
    print(f"loraledger runtime on http://{settings.host}:{settings.port}  model {settings.model}", flush=True)
    print(f"chain {chain.chain.chain_id} ({'embedded, JSON-RPC at /rpc' if chain.embedded else settings.chain}); "
          f"operator {chain.operator.address}", flush=True)  # fmt: skip
    print(f"adapters: {', '.join(adapters)}", flush=True)
    uvicorn.run(create_app(runtime), host=settings.host, port=settings.port, log_level="warning")
    return 0
