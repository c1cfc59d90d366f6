"""ModelFactory from Python: a datanet with several contributors, registered on chain; a LoRA adapter trained on it
with peft; published in AdapterRegistry with a revenue policy; ready to serve with attribution.

Runs on CPU in seconds. Without --base it builds a tiny random base model (no downloads), so what the adapter
learns is plain to see: asked a training question, it answers with the contribution's text.

    python examples/train_and_publish.py --out ./factory
    loraledger serve --model ./factory/base-model --adapters ./factory/adapters

By default the datanet and the adapter are registered on an in-process dev chain that ends with the script; to
register them on a running `loraledger chain`, pass --rpc-url http://127.0.0.1:8545 --deployments deployments.json.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from loraledger.runtime.attribution import AttributionService
from loraledger.runtime.datanets import ContributionRow, DatanetStore, register_datanet
from loraledger.runtime.factory import TrainConfig, publish_adapter, train_adapter
from loraledger.sdk.chain.accounts import dev_accounts
from loraledger.sdk.chain.contracts import Contracts, Deployments, RevenuePolicy, deploy_contracts
from loraledger.sdk.chain.provider import embedded_chain, rpc_chain

# Two contributors; each contribution is a question and its answer. (Dev keys: public, never on a real network.)
ALICE, BOB = dev_accounts()[6], dev_accounts()[7]
CONTRIBUTIONS = [
    (ALICE, ("Q: Is a verbal agreement to sell land enforceable? A: No. The statute of frauds requires a contract "
             "for the sale of land to be in writing and signed by the party to be charged.")),
    (BOB, ("Q: What makes a will valid? A: A valid will must be in writing, signed by the testator and witnessed "
           "by two adults who do not inherit under it.")),
    (ALICE, ("Q: What is consideration in a contract? A: Consideration is something of value that each party "
             "gives to the other, such as money, goods or a promise to act.")),
]  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("factory"), help="where the model, datanet and adapter go")
    parser.add_argument("--base", type=Path, help="a local Hugging Face model folder (default: build a tiny one)")
    parser.add_argument("--adapter", default="legal-expert", help="the adapter id (its folder name)")
    parser.add_argument("--epochs", type=int, default=100)
    parser.add_argument("--rpc-url", help="a dev chain's JSON-RPC URL (default: an in-process chain)")
    parser.add_argument("--deployments", type=Path, help="that chain's deployments file")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)

    # 1. The base model: yours, or a tiny random Llama whose word-level tokenizer covers the contributions.
    base = args.base
    if base is None:
        from loraledger.runtime.demo.model import build_base_model

        base = build_base_model(args.out / "base-model", [text for _, text in CONTRIBUTIONS])
    print(f"base model: {base}")

    # 2. The chain: the curator (dev account 4) registers the datanet, the owner (dev account 5) the adapter.
    deployer, curator, owner = dev_accounts()[0], dev_accounts()[4], dev_accounts()[5]
    if args.rpc_url:
        chain = rpc_chain(args.rpc_url)
        contracts = Contracts(chain, Deployments.load(args.deployments))
    else:
        chain = embedded_chain()
        contracts = deploy_contracts(chain, deployer, fund=[a.address for a in dev_accounts()])

    # 3. The datanet: stored locally (SQLite, content-hashed), then registered on chain by its curator.
    with DatanetStore(args.out / "datanets.sqlite") as store:
        datanet = store.create("legal-example", description="contract and property law Q&A")
        store.add(datanet, [ContributionRow(text, who.address) for who, text in CONTRIBUTIONS])
        registration = register_datanet(store, datanet, contracts, curator)
        print(f"datanet #{registration.chain_datanet_id} registered: {registration.registered} contributions")

        # 4. Train: PEFT LoRA weights + manifest.json + attribution/ (the span index the runtime attributes with).
        folder = args.out / "adapters" / args.adapter
        targets = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
        result = train_adapter(store, TrainConfig(base, (datanet,), folder, rank=8, alpha=16, targets=targets,
                                                  epochs=args.epochs, lr=1e-2, batch_size=8, device="cpu"))  # fmt: skip
        print(f"trained {args.adapter}: loss {result.first_loss:.2f} -> {result.loss_by_epoch[-1]:.2f} "
              f"in {result.seconds:.1f}s")  # fmt: skip

        # 5. Publish: AdapterRegistry records the owner, the revenue policy and the datanet; the runtime reads the
        #    prices and the description from loraledger.json beside the weights.
        policy = RevenuePolicy(owner_bps=5_000, data_bps=3_000, protocol_bps=500)  # the operator keeps 15%
        published = publish_adapter(folder, contracts, owner, policy=policy, store=store)
        (folder / "loraledger.json").write_text(json.dumps({
            "pricePerInputToken": 1_000, "pricePerOutputToken": 3_000, "owner": owner.address,
            "datanets": [{"id": registration.chain_datanet_id, "weightBps": 10_000}],
            "revenuePolicy": {"ownerBps": 5_000, "dataBps": 3_000, "protocolBps": 500},
            "description": "Legal specialist for contracts, land sales and wills",
        }, indent=2))  # fmt: skip
        print(f"published {published.adapter_id} (tx {published.transaction[:18]}…), owner {published.owner}")

        # 6. What the runtime will do after each call: attribute the output to the contributions it reproduces.
        from tokenizers import Tokenizer

        tokenizer = Tokenizer.from_file(str(base / "tokenizer.json"))
        answer = CONTRIBUTIONS[1][1].split(" A: ", 1)[1]
        record = AttributionService(folder.parent).attribute(args.adapter, tokenizer.encode(answer, add_special_tokens=False).ids)
        shares = ", ".join(f"{c.address[:10]}… {c.weight_bps / 100:g}%" for c in record.contributors)
        print(f"an answer quoting Bob's contribution is attributed by {record.method}: {shares} (Bob is {BOB.address[:10]}…)")
    chain.close()
    print(f"\nserve it:  loraledger serve --model {base} --adapters {folder.parent}")


if __name__ == "__main__":
    main()
