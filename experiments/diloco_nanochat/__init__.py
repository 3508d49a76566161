"""The flagship: nanochat's model and inner optimizer wrapped by DiLoCo across 4 simulated islands."""
