"""`loraledger datanets create|add|list|show|register`, and the chain options the factory's commands share."""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

from eth_account import Account
from eth_account.signers.local import LocalAccount

from .store import ContributionRow, DatanetError, DatanetStore

__all__ = ["add_chain_arguments", "connect", "register", "signer"]

DEFAULT_STORE = Path("datanets.db")


def add_store_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--store", type=Path, default=DEFAULT_STORE, help="the datanet store, a SQLite file (default: %(default)s)"
    )


def add_chain_arguments(parser: argparse.ArgumentParser) -> None:
    """--rpc, --deployments (or --runtime) and the signing key (--key-env or --dev-account)."""
    parser.add_argument("--rpc", default="http://127.0.0.1:8545", help="JSON-RPC URL (default: %(default)s)")
    parser.add_argument(
        "--deployments", type=Path, default=Path("deployments.json"), help="deployments file (default: %(default)s)"
    )
    parser.add_argument(
        "--runtime", metavar="URL",
        help="a runtime (e.g. http://127.0.0.1:8000): use its chain and contracts (GET /v1/chain) instead of "
        "--rpc and --deployments",
    )  # fmt: skip
    key = parser.add_mutually_exclusive_group(required=True)
    key.add_argument("--key-env", metavar="VAR", help="environment variable holding the signer's private key")
    key.add_argument("--dev-account", type=int, metavar="N", help="dev account N of the public test mnemonic")


def signer(args: argparse.Namespace) -> LocalAccount:
    if args.dev_account is not None:
        from loraledger.sdk.chain.accounts import dev_accounts

        if not 0 <= args.dev_account < 10:
            raise DatanetError("--dev-account must be 0..9")
        return dev_accounts()[args.dev_account]
    key = os.environ.get(args.key_env)
    if not key:
        raise DatanetError(f"environment variable {args.key_env} is empty")
    return Account.from_key(key)


def connect(args: argparse.Namespace):
    from loraledger.sdk.chain.contracts import Contracts, Deployments
    from loraledger.sdk.chain.provider import rpc_chain

    if args.runtime:
        import httpx

        try:
            info = httpx.get(args.runtime.rstrip("/") + "/v1/chain", timeout=30).raise_for_status().json()
        except httpx.HTTPError as exc:
            raise DatanetError(f"{args.runtime}: cannot read its chain (GET /v1/chain): {exc}") from None
        deployments = Deployments.from_json(info)
        return Contracts(rpc_chain(deployments.rpc_url), deployments)
    if not args.deployments.is_file():
        raise DatanetError(f"{args.deployments}: no deployments file (start one with `loraledger chain`)")
    return Contracts(rpc_chain(args.rpc), Deployments.load(args.deployments))


def _resolve(store: DatanetStore, ref: str) -> int:
    return store.get(int(ref) if ref.isdigit() else ref).id


def _cmd_create(args: argparse.Namespace) -> int:
    with DatanetStore(args.store) as store:
        datanet_id = store.create(args.name, description=args.description, curator=args.curator)
    print(f"created datanet {datanet_id} ({args.name}) in {args.store}")
    return 0


def _cmd_add(args: argparse.Namespace) -> int:
    with DatanetStore(args.store, max_text_bytes=args.max_bytes) as store:
        datanet_id = _resolve(store, args.datanet)
        if args.text is not None:
            if not args.contributor:
                raise DatanetError("--text needs --contributor")
            row = ContributionRow(args.text, args.contributor)
            result = store.add(datanet_id, [row], skip_duplicates=args.skip_duplicates)
        elif args.file is None:
            raise DatanetError("give a .jsonl or .csv file, or --text")
        else:
            result = store.import_file(
                datanet_id,
                args.file,
                default_contributor=args.contributor,
                skip_duplicates=args.skip_duplicates,
                progress=not args.quiet,
            )
    skipped = f", skipped {result.skipped_duplicates} duplicate(s)" if result.skipped_duplicates else ""
    print(f"added {result.added} contribution(s) to datanet {datanet_id}{skipped}")
    return 0


def _cmd_list(args: argparse.Namespace) -> int:
    with DatanetStore(args.store) as store:
        datanets = store.datanets()
    if args.json:
        print(json.dumps([d.__dict__ for d in datanets], indent=2))
        return 0
    if not datanets:
        print(f"no datanets in {args.store} (create one with `loraledger datanets create NAME`)")
        return 0
    print(f"{'id':>4}  {'name':<24} {'contributions':>13} {'contributors':>12} {'on chain':>10}")
    for d in datanets:
        chain = f"{d.chain_datanet_id}@{d.network_chain_id}" if d.chain_datanet_id is not None else "-"
        print(f"{d.id:>4}  {d.name:<24} {d.contributions:>13} {d.contributors:>12} {chain:>10}")
    return 0


def _cmd_show(args: argparse.Namespace) -> int:
    with DatanetStore(args.store) as store:
        d = store.get(_resolve(store, args.datanet))
        rows = store.contributions(d.id, limit=args.limit)
    if args.json:
        out = dict(d.__dict__, sample=[r.__dict__ for r in rows])
        print(json.dumps(out, indent=2))
        return 0
    print(f"datanet {d.id}: {d.name}")
    if d.description:
        print(f"  {d.description}")
    print(f"  curator:       {d.curator or '(set at registration)'}")
    print(f"  contributions: {d.contributions} from {d.contributors} contributor(s), {d.registered} registered")
    if d.chain_datanet_id is not None:
        print(f"  on chain:      datanet {d.chain_datanet_id} on chain {d.network_chain_id}")
    for r in rows:
        text = r.text.replace("\n", " ")
        print(f"  {r.content_hash[:12]}… {r.contributor}  {text[:60]}{'…' if len(text) > 60 else ''}")
    return 0


def _cmd_register(args: argparse.Namespace) -> int:
    from .chain import register_datanet

    account = signer(args)
    contracts = connect(args)
    try:
        with DatanetStore(args.store) as store:
            result = register_datanet(
                store,
                _resolve(store, args.datanet),
                contracts,
                account,
                metadata_uri=args.metadata_uri,
                batch_size=args.batch_size,
                progress=not args.quiet,
            )
    finally:
        contracts.chain.close()
    created = " (created)" if result.created else ""
    print(
        f"datanet {result.datanet_id} is datanet {result.chain_datanet_id} on chain{created}: registered "
        f"{result.registered} contribution(s) in {result.transactions} transaction(s)"
        + (f", {result.already_on_chain} were already on chain" if result.already_on_chain else "")
    )
    return 0


def _guarded(fn):
    def run(args: argparse.Namespace) -> int:
        from loraledger.sdk.chain.errors import ChainError

        try:
            return fn(args)
        except (DatanetError, ChainError, OSError) as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 1

    return run


def register(commands: argparse._SubParsersAction) -> None:
    """Adds `datanets` and its subcommands to the `loraledger` parser."""
    datanets = commands.add_parser(
        "datanets",
        help="create, fill, inspect and register datanets",
        description="Datanets: curated contributions (text, contributor, metadata) in a local SQLite store, "
        "content-hashed and registered on chain in batches by the curator.",
    )
    sub = datanets.add_subparsers(dest="datanets_command", required=True, metavar="SUBCOMMAND")

    create = sub.add_parser("create", help="create a datanet")
    create.add_argument("name")
    create.add_argument("--description", default="")
    create.add_argument("--curator", help="curator address (default: whoever registers it first)")
    add_store_argument(create)
    create.set_defaults(run=_guarded(_cmd_create))

    add = sub.add_parser(
        "add",
        help="add contributions from a JSONL or CSV file, or one --text",
        description="JSONL: one object per line with text, contributor and an optional metadata object. CSV: a "
        "header with text and contributor columns; other columns become metadata. All rows or none are added: "
        "empty, oversized, malformed and duplicate rows are reported with their line numbers.",
    )
    add.add_argument("datanet", help="datanet id or name")
    add.add_argument("file", nargs="?", type=Path, help="a .jsonl or .csv file")
    add.add_argument("--text", help="add this one text instead of a file")
    add.add_argument("--contributor", help="contributor address for rows that name none (and for --text)")
    add.add_argument("--skip-duplicates", action="store_true", help="leave out rows already in the datanet")
    add.add_argument("--max-bytes", type=int, default=64 * 1024, help="largest text in bytes (default: %(default)s)")
    add.add_argument("--quiet", action="store_true", help="no progress bar")
    add_store_argument(add)
    add.set_defaults(run=_guarded(_cmd_add))

    list_ = sub.add_parser("list", help="list datanets")
    list_.add_argument("--json", action="store_true")
    add_store_argument(list_)
    list_.set_defaults(run=_guarded(_cmd_list))

    show = sub.add_parser("show", help="show a datanet and its first contributions")
    show.add_argument("datanet", help="datanet id or name")
    show.add_argument("--limit", type=int, default=10, help="contributions to show (default: %(default)s)")
    show.add_argument("--json", action="store_true")
    add_store_argument(show)
    show.set_defaults(run=_guarded(_cmd_show))

    reg = sub.add_parser("register", help="register a datanet and its new contributions on chain (curator)")
    reg.add_argument("datanet", help="datanet id or name")
    reg.add_argument("--metadata-uri", default="", help="the datanet's metadata URI on chain")
    reg.add_argument("--batch-size", type=int, default=100, help="contributions per transaction (default: %(default)s)")
    reg.add_argument("--quiet", action="store_true", help="no progress bar")
    add_store_argument(reg)
    add_chain_arguments(reg)
    reg.set_defaults(run=_guarded(_cmd_register))
