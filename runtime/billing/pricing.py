"""Prices and revenue terms of adapters (`loraledger.json` beside the PEFT files), and what a call may cost."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator
from web3 import Web3

__all__ = ["TERMS_FILE", "AdapterTerms", "DatanetShare", "Prices", "RevenueTerms", "TermsError", "load_terms"]

TERMS_FILE = "loraledger.json"
_UINT128_MAX = 2**128 - 1
_BPS = 10_000


class TermsError(ValueError):
    """An adapter's loraledger.json is unreadable or invalid; the message names the file and the problem."""


@dataclass(frozen=True)
class Prices:
    """Per-token prices in the token's smallest unit."""

    input_wei: int = 0
    output_wei: int = 0

    @property
    def free(self) -> bool:
        return self.input_wei == 0 and self.output_wei == 0

    def cost(self, input_tokens: int, output_tokens: int) -> int:
        return input_tokens * self.input_wei + output_tokens * self.output_wei

    def max_output_tokens(self, budget_wei: int, input_tokens: int) -> int:
        """The most output tokens `budget_wei` pays for after the prompt; negative when it cannot pay the prompt."""
        left = budget_wei - input_tokens * self.input_wei
        if left < 0:
            return -1
        if self.output_wei == 0:
            return 2**31 - 1
        return left // self.output_wei


class _Share(BaseModel):
    model_config = ConfigDict(extra="forbid", populate_by_name=True)
    id: int = Field(ge=0)
    weight_bps: int = Field(alias="weightBps", ge=1, le=_BPS)


class _Policy(BaseModel):
    model_config = ConfigDict(extra="forbid", populate_by_name=True)
    owner_bps: int = Field(alias="ownerBps", ge=0, le=_BPS)
    data_bps: int = Field(alias="dataBps", ge=0, le=_BPS)
    protocol_bps: int = Field(alias="protocolBps", ge=0, le=_BPS)

    @model_validator(mode="after")
    def _sum(self) -> _Policy:
        if self.owner_bps + self.data_bps + self.protocol_bps > _BPS:
            raise ValueError("ownerBps + dataBps + protocolBps is above 10000 (the operator gets the rest)")
        return self


class _TermsFile(BaseModel):
    """The schema of loraledger.json; amounts may be JSON numbers or decimal strings."""

    model_config = ConfigDict(extra="forbid", populate_by_name=True)
    price_per_input_token: int | None = Field(default=None, alias="pricePerInputToken", ge=0, le=_UINT128_MAX)
    price_per_output_token: int | None = Field(default=None, alias="pricePerOutputToken", ge=0, le=_UINT128_MAX)
    owner: str | None = None
    datanets: list[_Share] = Field(default_factory=list)
    revenue_policy: _Policy | None = Field(default=None, alias="revenuePolicy")
    description: str = Field(default="", max_length=2000)

    @field_validator("price_per_input_token", "price_per_output_token", mode="before")
    @classmethod
    def _decimal(cls, value: object) -> object:
        if isinstance(value, str):
            if not value.isdigit():
                raise ValueError("must be a whole number of the token's smallest unit")
            return int(value)
        if isinstance(value, float | bool):
            raise ValueError("must be an integer (or a decimal string), not a float")
        return value

    @field_validator("owner")
    @classmethod
    def _address(cls, value: str | None) -> str | None:
        if value is not None and not Web3.is_address(value):
            raise ValueError(f"{value!r} is not an address")
        return None if value is None else Web3.to_checksum_address(value)

    @model_validator(mode="after")
    def _datanets(self) -> _TermsFile:
        if self.datanets:
            if len({d.id for d in self.datanets}) != len(self.datanets):
                raise ValueError("a datanet is listed twice")
            if sum(d.weight_bps for d in self.datanets) != _BPS:
                raise ValueError("datanet weightBps must add up to 10000")
        if self.revenue_policy and self.revenue_policy.data_bps and not self.datanets:
            raise ValueError("revenuePolicy.dataBps is set but no datanets are listed")
        return self


@dataclass(frozen=True)
class DatanetShare:
    datanet_id: int
    weight_bps: int


@dataclass(frozen=True)
class RevenueTerms:
    owner_bps: int
    data_bps: int
    protocol_bps: int


@dataclass(frozen=True)
class AdapterTerms:
    """What an adapter costs and who it pays, as its loraledger.json says (or the operator's defaults)."""

    prices: Prices
    owner: str | None = None
    datanets: tuple[DatanetShare, ...] = ()
    revenue: RevenueTerms | None = None
    description: str = ""


def load_terms(folder: Path, default_prices: Prices = Prices()) -> AdapterTerms:
    """Reads `folder/loraledger.json`; without one the adapter is sold at `default_prices`."""
    path = folder / TERMS_FILE
    if not path.exists():
        return AdapterTerms(prices=default_prices)
    try:
        raw = json.loads(path.read_bytes())
    except (OSError, ValueError) as exc:
        raise TermsError(f"{path}: not readable JSON ({exc})") from None
    try:
        terms = _TermsFile.model_validate(raw)
    except ValidationError as exc:
        problems = "; ".join(f"{'.'.join(map(str, e['loc'])) or 'file'}: {e['msg']}" for e in exc.errors())
        raise TermsError(f"{path}: {problems}") from None
    return AdapterTerms(
        prices=Prices(
            default_prices.input_wei if terms.price_per_input_token is None else terms.price_per_input_token,
            default_prices.output_wei if terms.price_per_output_token is None else terms.price_per_output_token,
        ),
        owner=terms.owner,
        datanets=tuple(DatanetShare(d.id, d.weight_bps) for d in terms.datanets),
        revenue=None
        if terms.revenue_policy is None
        else RevenueTerms(terms.revenue_policy.owner_bps, terms.revenue_policy.data_bps, terms.revenue_policy.protocol_bps),
        description=terms.description,
    )
