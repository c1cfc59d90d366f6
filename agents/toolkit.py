"""LoraLedgerToolkit: every adapter a runtime serves, as AdapterTools."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from langchain_core.tools import BaseToolkit
from loraledger.sdk import AsyncClient, Client, Model
from pydantic import ConfigDict, Field, model_validator

from .tools import DEFAULT_MAX_TOKENS, AdapterTool

__all__ = ["LoraLedgerToolkit"]

BASE_MODEL_ID = "base"
"""The id under which a runtime serves its base model without an adapter."""


class LoraLedgerToolkit(BaseToolkit):
    """The adapters of one runtime as tools, one AdapterTool each, named and described from `GET /v1/models`.

        toolkit = LoraLedgerToolkit(client=Client(base_url=..., wallet=wallet, budget=budget, trace=trace))
        tools = toolkit.get_tools()          # one tool per adapter; the base model is left out

    `adapters` keeps only those ids (in that order); `include_free=False` drops adapters that cost nothing
    (useful when a runtime's free adapters are untrusted test fixtures). All tools share `client` (and
    `async_client`), so they share its Wallet, Budget and Trace. The adapter list is read on the first
    `get_tools()` and kept; `refresh()` reads it again.
    """

    model_config = ConfigDict(arbitrary_types_allowed=True)

    client: Client | None = Field(default=None, exclude=True)
    async_client: AsyncClient | None = Field(default=None, exclude=True)
    adapters: list[str] | None = None
    include_base: bool = False
    include_free: bool = True
    max_tokens: int = Field(default=DEFAULT_MAX_TOKENS, ge=1)
    tool_kwargs: dict[str, Any] = Field(default_factory=dict, description="extra AdapterTool arguments for every tool")
    models: list[Model] | None = Field(default=None, description="the runtime's adapters (read on first use)")

    @model_validator(mode="after")
    def _needs_a_client(self) -> LoraLedgerToolkit:
        if self.client is None and self.async_client is None:
            raise ValueError("give a loraledger.sdk Client (client=) or AsyncClient (async_client=)")
        return self

    def refresh(self) -> list[Model]:
        """Reads the runtime's adapter list (`client.models.list()`) again."""
        if self.client is None:
            raise RuntimeError("LoraLedgerToolkit.refresh needs a sync client; use arefresh() with an async one")
        self.models = list(self.client.models.list())
        return self.models

    async def arefresh(self) -> list[Model]:
        """`refresh` through the async client."""
        if self.async_client is None:
            return self.refresh()
        self.models = list(await self.async_client.models.list())
        return self.models

    def get_tools(self) -> list[AdapterTool]:
        """One AdapterTool per adapter (reads the adapter list first if it was never read)."""
        if self.models is None:
            self.refresh()
        return self._tools(self.models or [])

    async def aget_tools(self) -> list[AdapterTool]:
        """`get_tools` reading the adapter list through the async client."""
        if self.models is None:
            await self.arefresh()
        return self._tools(self.models or [])

    def _tools(self, models: Iterable[Model]) -> list[AdapterTool]:
        by_id = {m.id: m for m in models}
        if self.adapters is not None:
            missing = [a for a in self.adapters if a not in by_id]
            if missing:
                raise ValueError(f"the runtime does not serve {', '.join(missing)} (it serves {', '.join(by_id)})")
            chosen = [by_id[a] for a in self.adapters]
        else:
            chosen = [m for m in by_id.values() if self.include_base or m.id != BASE_MODEL_ID]
        if not self.include_free:
            chosen = [m for m in chosen if m.price_per_input_token_wei or m.price_per_output_token_wei]
        kwargs = {"client": self.client, "async_client": self.async_client, "max_tokens": self.max_tokens}
        return [AdapterTool.from_model(m, **kwargs, **self.tool_kwargs) for m in chosen]
