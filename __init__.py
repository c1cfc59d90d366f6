"""loraledger: pay-per-call LoRA adapters for autonomous agents, settled on chain with attribution."""

__version__ = "0.1.0"
