"""Step-indexed multipliers: learning rate (warmup, constant, linear warmdown) and Muon momentum.

Each is a plain function of the step that optax applies at (the update count, starting at 0), so the
values logged for step s are the values used for step s.
"""
import optax


def lr_multiplier(total_steps: int, warmup_steps: int, warmdown_frac: float,
                  final_lr_frac: float) -> optax.Schedule:
    """nanochat@3a5e0bc get_lr_multiplier: 0 -> 1 over warmup, 1, then linear to final_lr_frac."""
    warmdown_steps = round(warmdown_frac * total_steps)
    constant_steps = max(0, total_steps - warmup_steps - warmdown_steps)
    return optax.join_schedules(
        # warmup is (step + 1) / warmup_steps, as nanochat writes it
        [optax.linear_schedule(1.0 / max(warmup_steps, 1), 1.0 + 1.0 / max(warmup_steps, 1), warmup_steps),
         optax.constant_schedule(1.0),
         optax.linear_schedule(1.0, final_lr_frac, warmdown_steps)],
        boundaries=[warmup_steps, warmup_steps + constant_steps])


def muon_momentum(start: float, end: float, ramp_steps: int) -> optax.Schedule:
    """nanochat@3a5e0bc: momentum 0.85 -> 0.95 linearly over the first 300 steps."""
    return optax.linear_schedule(start, end, ramp_steps)
