"""Per-token cross-entropy in nats from float32 logits."""
import jax
import jax.numpy as jnp


def token_nats(logits_BTV, targets_BT):
    """-log p(target) per position; mean over all B*T tokens is the training loss (nanochat: no masks)."""
    logz = jax.nn.logsumexp(logits_BTV, axis=-1)
    picked = jnp.take_along_axis(logits_BTV, targets_BT[..., None], axis=-1)[..., 0]
    return logz - picked
