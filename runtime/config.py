"""Runtime settings: every `loraledger serve` option, also settable as a LORALEDGER_* environment variable."""

from __future__ import annotations

from pathlib import Path

from pydantic import Field, SecretStr, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

__all__ = ["ServeSettings"]


class ServeSettings(BaseSettings):
    """Built once by the CLI and passed down; nothing below reads the environment."""

    model_config = SettingsConfigDict(env_prefix="LORALEDGER_", extra="forbid", frozen=True)

    model: Path = Field(description="local Hugging Face folder of the base model")
    adapters: Path | None = Field(default=None, description="folder of adapters: one PEFT subfolder per adapter")
    chain: str = Field(default="embedded", description="'embedded' (in-process dev chain) or a JSON-RPC URL")
    deployments: Path | None = Field(default=None, description="deployments file (required with a URL chain)")
    operator_key: SecretStr | None = Field(default=None, description="the operator's private key (0x-hex)")
    host: str = "127.0.0.1"
    port: int = Field(default=8000, ge=0, le=65535)
    device: str = Field(default="cpu", pattern=r"^(cpu|cuda(:\d+)?)$")
    data_dir: Path = Field(default=Path(".loraledger"), description="where the ledger lives")
    default_price: int = Field(default=0, ge=0, description="price per input and output token without loraledger.json")
    max_tokens_limit: int = Field(default=2048, ge=1, description="the most tokens one call may ask to generate")
    min_deposit: int = Field(default=0, ge=0, description="smallest channel deposit accepted")
    min_withdraw_delay_s: int = Field(default=60, ge=0, description="shortest channel withdraw delay accepted")
    max_unsettled: int | None = Field(default=None, ge=0, description="per channel: most owed before calls wait")
    settle_every_calls: int | None = Field(default=None, ge=1, description="default: 1 on the embedded chain, 100 else")
    settle_interval_s: float = Field(default=30.0, gt=0)
    max_adapters: int = Field(default=8, ge=1, description="GPU (device) adapter slots")
    max_lora_rank: int = Field(default=64, ge=1)
    max_num_seqs: int = Field(default=64, ge=1)
    max_upload_bytes: int = Field(default=512 << 20, ge=1)

    @field_validator("chain")
    @classmethod
    def _chain(cls, value: str) -> str:
        if value != "embedded" and not value.startswith(("http://", "https://")):
            raise ValueError("chain is 'embedded' or an http(s) JSON-RPC URL")
        return value

    @property
    def embedded_chain(self) -> bool:
        return self.chain == "embedded"

    @property
    def settle_batch_calls(self) -> int:
        if self.settle_every_calls is not None:
            return self.settle_every_calls
        return 1 if self.embedded_chain else 100
