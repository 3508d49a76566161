"""GPT-2 (learned positions, LayerNorm with biases, GELU, tied head) on the experiment contract, loadable from HF."""
