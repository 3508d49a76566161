"""SparseLoCo (2508.15706): chunked top-k, 2-bit values, decayed error feedback, plain outer SGD."""
