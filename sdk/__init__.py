"""The agent SDK: HTTP client, wallet, vouchers, receipts, reasoning trace and contract bindings."""
