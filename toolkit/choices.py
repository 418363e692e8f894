"""Architectures and adapter types: the CLI lists them without importing torch (bundles run without it)."""
ARCHS = ("bi", "cross")
ADAPTERS = ("seq_bn", "double_seq_bn", "par_bn", "lora", "ia3", "none")
