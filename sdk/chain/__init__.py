"""Chain layer: typed contract bindings, deployment and providers over the embedded EVM, JSON-RPC and anvil."""
