"""MuLoCo (2505.23725): nanochat's Muon inner optimizer under DiLoCo, with 4-bit error-fed pseudo-gradients."""
