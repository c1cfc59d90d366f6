"""`loraledger train` (ModelFactory) and `loraledger adapters publish`."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from ..datanets.cli import add_chain_arguments, add_store_argument, connect, signer
from ..datanets.store import DatanetError, DatanetStore
from .publish import PublishError
from .train import DEFAULT_TARGETS, TrainConfig

__all__ = ["add_publish", "register"]


def _cmd_train(args: argparse.Namespace) -> int:
    from .train import train_adapter

    try:
        with DatanetStore(args.store) as store:
            datanets = tuple(store.get(int(d) if d.isdigit() else d).id for d in args.datanet)
            config = TrainConfig(
                base_dir=args.base,
                datanets=datanets,
                out_dir=args.out,
                rank=args.rank,
                alpha=args.alpha,
                targets=tuple(t.strip() for t in args.targets.split(",") if t.strip()),
                epochs=args.epochs,
                lr=args.lr,
                seed=args.seed,
                batch_size=args.batch_size,
                max_seq_tokens=args.max_seq_tokens,
                device=args.device,
                influence_dim=args.influence_dim,
                progress=not args.quiet,
            )
            result = train_adapter(store, config)
    except (DatanetError, ValueError, FileNotFoundError, FloatingPointError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    losses = ", ".join(f"{x:.4f}" for x in result.loss_by_epoch)
    print(f"trained on {len(result.manifest.contribution_hashes)} contribution(s) in {result.seconds:.1f} s")
    print(f"loss: first step {result.first_loss:.4f}; mean by epoch {losses}")
    print(f"adapter written to {result.out_dir} (weights hash {result.manifest.weights_hash})")
    return 0


def _cmd_publish(args: argparse.Namespace) -> int:
    from loraledger.sdk.chain.contracts import RevenuePolicy
    from loraledger.sdk.chain.errors import ChainError

    from .publish import publish_adapter, write_terms

    try:
        owner = signer(args)
        contracts = connect(args)
        try:
            with DatanetStore(args.store) as store:
                result = publish_adapter(
                    args.dir,
                    contracts,
                    owner,
                    policy=RevenuePolicy(args.owner_bps, args.data_bps, args.protocol_bps),
                    adapter_id=args.id,
                    uri=args.uri,
                    store=store,
                )
        finally:
            contracts.chain.close()
        write_terms(args.dir, result, price_per_input_wei=args.price_in, price_per_output_wei=args.price_out,
                    description=args.description)  # fmt: skip
    except (PublishError, DatanetError, ChainError, OSError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print(f"adapter {result.adapter_id!r} registered (id {result.adapter_id_hash.hex()}) owned by {result.owner}")
    print(f"datanets {list(result.datanet_ids)}, weights {list(result.datanet_weights_bps)} bps")
    print(f"transaction {result.transaction}")
    if not args.runtime:
        print("to serve it, pass --runtime URL (or copy the folder into a runtime's adapters folder)")
        return 0
    import httpx

    from loraledger.sdk.adapter_auth import upload_adapter

    try:
        served = upload_adapter(args.runtime, args.dir, owner, adapter_id=result.adapter_id)
    except (httpx.HTTPError, OSError) as exc:
        body = exc.response.text if isinstance(exc, httpx.HTTPStatusError) else ""
        print(f"error: registered on chain, but the runtime refused the upload: {exc} {body}", file=sys.stderr)
        return 1
    print(f"served by {args.runtime} as {served['id']!r} (rank {served['rank']}, "
          f"{'with' if served['attribution'] else 'without'} its attribution index)")  # fmt: skip
    return 0


def add_publish(adapters_commands: argparse._SubParsersAction) -> None:
    """Adds `publish` under an existing `loraledger adapters` subparser group."""
    publish = adapters_commands.add_parser(
        "publish",
        help="register a trained adapter in AdapterRegistry and serve it on a runtime",
        description="Registers an adapter written by `loraledger train` (its manifest gives the base-model and "
        "weights hashes and the datanets with their weights) under its folder name, with the revenue policy; "
        "writes its loraledger.json (prices and the registered terms); with --runtime, uploads it there, signed "
        "by the owner's key, so the runtime serves it with its attribution index.",
    )
    publish.add_argument("dir", type=Path, help="the adapter folder")
    publish.add_argument("--id", help="adapter id (default: the folder's name)")
    publish.add_argument("--uri", default="", help="where the weights can be fetched")
    publish.add_argument("--owner-bps", type=int, default=3000, help="owner share (default: %(default)s)")
    publish.add_argument("--data-bps", type=int, default=3000, help="data contributors' share (default: %(default)s)")
    publish.add_argument("--protocol-bps", type=int, default=500, help="protocol share (default: %(default)s)")
    publish.add_argument("--price-in", type=int, default=0, help="price per input token in wei (default: free)")
    publish.add_argument("--price-out", type=int, default=0, help="price per output token in wei (default: free)")
    publish.add_argument("--description", default="", help="what the adapter is good at (shown to agents)")
    add_store_argument(publish)
    add_chain_arguments(publish)
    publish.set_defaults(run=_cmd_publish)


def register(commands: argparse._SubParsersAction, *, adapters: bool = True) -> None:
    """Adds `train` and (unless another module owns the group) `adapters publish` to the `loraledger` parser."""
    train = commands.add_parser(
        "train",
        help="fine-tune a LoRA adapter on datanets (ModelFactory)",
        description="Fine-tunes a LoRA adapter with peft on every contribution of the datanets and writes the "
        "PEFT adapter, manifest.json and the attribution index into --out.",
    )
    train.add_argument(
        "--base", type=Path, required=True, help="base model folder (config.json, *.safetensors, tokenizer.json)"
    )
    train.add_argument("--datanet", action="append", required=True, help="datanet id or name (repeatable)")
    train.add_argument("--out", type=Path, required=True, help="adapter folder to write")
    train.add_argument("--rank", type=int, default=8)
    train.add_argument("--alpha", type=float, default=16.0)
    train.add_argument("--targets", default=",".join(DEFAULT_TARGETS), help="comma-separated module names")
    train.add_argument("--epochs", type=int, default=1)
    train.add_argument("--lr", type=float, default=2e-4)
    train.add_argument("--seed", type=int, default=0)
    train.add_argument("--batch-size", type=int, default=8)
    train.add_argument("--max-seq-tokens", type=int, default=512)
    train.add_argument("--device", default="auto", help="cpu, cuda, cuda:N or auto (default: %(default)s)")
    train.add_argument(
        "--influence-dim", type=int, default=0, help="save TracIn gradients projected to this many dimensions (0: off)"
    )
    train.add_argument("--quiet", action="store_true", help="no progress bar")
    add_store_argument(train)
    train.set_defaults(run=_cmd_train)
    if adapters:
        group = commands.add_parser("adapters", help="manage adapters")
        add_publish(group.add_subparsers(dest="adapters_command", required=True, metavar="SUBCOMMAND"))
