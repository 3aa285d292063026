"""The pickle interpreter: the opcode loop (vm) and what its records rebuild (rebuild)."""
