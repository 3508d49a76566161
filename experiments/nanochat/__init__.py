"""The nanochat base recipe (nanochat@3a5e0bc)."""
