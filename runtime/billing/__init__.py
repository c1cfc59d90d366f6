"""Billing: prices, voucher checks, the durable SQLite ledger and the settler."""
