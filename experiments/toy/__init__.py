"""Toy objectives for outer optimizers: synthetic data through the real loop, schemes, ledger and checkpoints."""
