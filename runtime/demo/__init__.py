"""`loraledger demo`: the whole system end to end on CPU (base model, datanets, ModelFactory, runtime, a paying
LangChain agent, settlement, attribution payouts and verification)."""

from .run import DemoConfig, DemoResult, run_demo

__all__ = ["DemoConfig", "DemoResult", "run_demo"]
