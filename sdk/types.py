"""Typed responses of the runtime's API: one pydantic model per response type, tolerant of unknown fields."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field, PrivateAttr
from pydantic.alias_generators import to_camel

from . import vouchers
from .chain.contracts import Deployments

__all__ = [
    "ChainInfo",
    "ChannelInfo",
    "ChatCompletion",
    "ChatCompletionChunk",
    "ChatCompletionMessage",
    "Choice",
    "ChoiceDelta",
    "ChunkChoice",
    "Completion",
    "CompletionChoice",
    "CompletionUsage",
    "Model",
    "ModelList",
    "Payment",
    "Quote",
    "Receipt",
    "ReceiptRecord",
]


class _Model(BaseModel):
    """Base of every response type: unknown fields are kept (as extras), never an error."""

    model_config = ConfigDict(extra="allow", populate_by_name=True, protected_namespaces=())


class _WireModel(_Model):
    """A protocol object whose JSON keys are camelCase (`cumulativeAmount`) and Python names snake_case."""

    model_config = ConfigDict(extra="allow", populate_by_name=True, alias_generator=to_camel, protected_namespaces=())


def _hex32(value: str) -> bytes:
    raw = bytes.fromhex(value.removeprefix("0x"))
    if len(raw) != 32:
        raise ValueError(f"expected 32 bytes, got {len(raw)}")
    return raw


class Receipt(_WireModel):
    """An operator-signed receipt of one paid call (the EIP-712 Receipt of DESIGN.md, plus its signature).

    Amounts are in the token's smallest unit; hashes are 0x-hex.
    """

    call_id: str
    channel_id: str
    adapter_id: str
    input_tokens: int
    output_tokens: int
    amount_wei: int = Field(alias="amount")
    cumulative_amount_wei: int = Field(alias="cumulativeAmount")
    call_hash: str
    output_hash: str
    attribution_hash: str
    signature: str | None = None

    def to_eip712(self) -> vouchers.Receipt:
        """The typed-data receipt that the operator signed."""
        return vouchers.Receipt(
            call_id=_hex32(self.call_id),
            channel_id=_hex32(self.channel_id),
            adapter_id=_hex32(self.adapter_id),
            input_tokens=self.input_tokens,
            output_tokens=self.output_tokens,
            amount=self.amount_wei,
            cumulative_amount=self.cumulative_amount_wei,
            call_hash=_hex32(self.call_hash),
            output_hash=_hex32(self.output_hash),
            attribution_hash=_hex32(self.attribution_hash),
        )

    def recover_signer(self, domain: vouchers.Domain) -> str:
        """The address that signed this receipt under `domain` (the operator's, if it verifies)."""
        if not self.signature:
            raise ValueError("the receipt carries no signature")
        return vouchers.recover_receipt_signer(domain, self.to_eip712(), bytes.fromhex(self.signature.removeprefix("0x")))

    def to_wire(self) -> dict[str, Any]:
        """The receipt's JSON fields as the runtime sends them (amounts as decimal strings), without signature."""
        return {
            "callId": self.call_id,
            "channelId": self.channel_id,
            "adapterId": self.adapter_id,
            "inputTokens": self.input_tokens,
            "outputTokens": self.output_tokens,
            "amount": str(self.amount_wei),
            "cumulativeAmount": str(self.cumulative_amount_wei),
            "callHash": self.call_hash,
            "outputHash": self.output_hash,
            "attributionHash": self.attribution_hash,
        }


class Payment(_Model):
    """What one call paid, as verified by the SDK."""

    amount_wei: int
    """Charged for this call (the receipt's amount)."""
    max_amount_wei: int
    """The call's maximum, as quoted by the runtime's 402."""
    cumulative_amount_wei: int
    """The channel's charged cumulative amount after this call."""
    voucher_amount_wei: int
    """The cumulative amount of the voucher this call signed."""
    channel_id: str
    payee: str
    payer: str
    token: str
    contract: str
    network: str
    transaction: str = ""
    """The claim transaction, or empty while the runtime defers settlement."""
    payment_id: str
    """The call's idempotency key (x402 payment-identifier)."""


class Quote(_Model):
    """A dry run of one call: what it would cost at most and whether the Budget would let it be paid."""

    model: str
    max_amount_wei: int
    payee: str | None = None
    token: str | None = None
    contract: str | None = None
    network: str | None = None
    price_per_input_token_wei: int = 0
    price_per_output_token_wei: int = 0
    allowed: bool
    reason: str | None = None
    """Why the Budget would refuse it (None when allowed)."""


class CompletionUsage(_Model):
    prompt_tokens: int = 0
    completion_tokens: int = 0
    total_tokens: int = 0


class ChatCompletionMessage(_Model):
    role: str = "assistant"
    content: str | None = None


class Choice(_Model):
    index: int = 0
    message: ChatCompletionMessage
    finish_reason: str | None = None


class ChatCompletion(_Model):
    """A chat completion; `.receipt` and `.payment` are set when the call was paid."""

    id: str
    object: str = "chat.completion"
    created: int = 0
    model: str
    choices: list[Choice]
    usage: CompletionUsage | None = None
    receipt: Receipt | None = None
    payment: Payment | None = None


class ChoiceDelta(_Model):
    role: str | None = None
    content: str | None = None


class ChunkChoice(_Model):
    index: int = 0
    delta: ChoiceDelta
    finish_reason: str | None = None


class ChatCompletionChunk(_Model):
    """One server-sent event of a streamed chat completion."""

    id: str
    object: str = "chat.completion.chunk"
    created: int = 0
    model: str
    choices: list[ChunkChoice]
    usage: CompletionUsage | None = None


class CompletionChoice(_Model):
    index: int = 0
    text: str
    finish_reason: str | None = None


class Completion(_Model):
    """A text completion (also the chunk type of a streamed one); `.receipt` and `.payment` as on ChatCompletion."""

    id: str
    object: str = "text_completion"
    created: int = 0
    model: str
    choices: list[CompletionChoice]
    usage: CompletionUsage | None = None
    receipt: Receipt | None = None
    payment: Payment | None = None


class Model(_Model):
    """An adapter the runtime serves, with its prices per token in the payment token's smallest unit (0 = free)."""

    id: str
    object: str = "model"
    created: int = 0
    owned_by: str = ""
    price_per_input_token_wei: int = 0
    price_per_output_token_wei: int = 0


class ModelList(_Model):
    object: str = "list"
    data: list[Model]

    def __iter__(self):  # type: ignore[override]  (iterate the models, like a page of openai-python)
        return iter(self.data)

    def __len__(self) -> int:
        return len(self.data)


class ReceiptRecord(_Model):
    """`GET /v1/receipts/{call_id}`: a stored receipt and, once its epoch is rooted, its Merkle proof."""

    id: str
    receipt: Receipt
    network: str | None = None
    contract: str | None = None
    proof: list[str] | None = None
    root: str | None = None
    _verified: bool = PrivateAttr(default=False)  # set by the client, never read from the wire

    @property
    def verified(self) -> bool:
        """Whether the client checked it (receipts.verify_record: the payee's signature under the contract the
        client paid, the call, and the Merkle proof when rooted): True for receipts of the client's own channels."""
        return self._verified


class ChannelInfo(_WireModel):
    """`GET /v1/channels/{channel_id}`: what the runtime has charged on one channel."""

    channel_id: str
    charged_cumulative_amount_wei: int = Field(alias="chargedCumulativeAmount")


class ChainInfo(_WireModel):
    """`GET /v1/chain`: where the runtime's contracts live (the content of its deployments file)."""

    chain_id: int
    rpc_url: str | None = None
    contracts: dict[str, str]

    def to_deployments(self) -> Deployments:
        """As the chain layer's Deployments (checks that all five contracts are there)."""
        return Deployments.from_json({"chainId": self.chain_id, "rpcUrl": self.rpc_url, "contracts": self.contracts})
