"""Triton SGMV kernels for batched multi-adapter LoRA and their torch references."""
