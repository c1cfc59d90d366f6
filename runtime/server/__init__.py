"""The OpenAI-compatible HTTP server with x402 payment per call."""
