"""The self-hosted runtime: engine, adapter cache, pricing, ledger, settlement, attribution and ModelFactory."""
