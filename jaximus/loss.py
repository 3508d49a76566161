"""Per-token cross-entropy in nats: from float32 logits, or fused with the unembedding in row chunks.

The fused form never holds the (tokens, vocab) logits: each chunk's logits are made, softcapped, scored
and (for the training loss) differentiated while they are in cache, and the gradient is computed in the
forward pass, as Liger's fused linear cross-entropy does (arXiv 2410.10989). On XLA:CPU at 4,096 x 256 x
8,192 it takes the head's forward + backward from 444 ms to 325 ms, the time of its three matmuls.
"""
import functools

import jax
import jax.numpy as jnp
from jax.sharding import PartitionSpec as P

CHUNK_LOGITS = 2**22  # logits per chunk (16 MiB of float32): 512 rows at vocab 8,192, the fastest of 256/512/1,024


def token_nats(logits_BTV, targets_BT):
    """-log p(target) per position; mean over all B*T tokens is the training loss (nanochat: no masks)."""
    logz = jax.nn.logsumexp(logits_BTV, axis=-1)
    picked = jnp.take_along_axis(logits_BTV, targets_BT[..., None], axis=-1)[..., 0]
    return logz - picked


def forward_from_features(features):
    """A model's forward(x_BT, weights, mask=None) -> float32 logits (B, T, V) from its features function."""
    def forward(x_BT, weights, mask=None):
        h, head, softcap = features(x_BT, weights, mask)
        logits, _ = _logits(h, head, softcap)
        return logits.reshape(*x_BT.shape, -1)

    return forward


def head_nats(h_ND, w_DV, targets_N, softcap: float | None):
    """Per-row nats of softcap(h @ w) against targets, chunk by chunk (evaluation: no gradient)."""
    def local(h, w, t):
        return _chunked(_chunk_nats, h, w, t, softcap)

    return _over_island_rows(local, P("fsdp"))(h_ND, w_DV, targets_N)


@functools.partial(jax.custom_vjp, nondiff_argnums=(3,))
def head_loss(h_ND, w_DV, targets_N, softcap: float | None):
    """Mean nats of softcap(h @ w) against targets; its gradient is made in the forward pass, chunk by chunk."""
    return jnp.mean(head_nats(h_ND, w_DV, targets_N, softcap))


def _head_loss_fwd(h_ND, w_DV, targets_N, softcap):
    n = h_ND.shape[0]
    loss, dh, dw = _over_island_rows(lambda h, w, t: _loss_and_grads(h, w, t, softcap, n),
                                     (P(), P("fsdp"), P()))(h_ND, w_DV, targets_N)
    return loss, (dh, dw)


def _head_loss_bwd(softcap, residuals, g):
    dh, dw = residuals
    return (g * dh).astype(dh.dtype), (g * dw).astype(dw.dtype), None


head_loss.defvjp(_head_loss_fwd, _head_loss_bwd)


def _over_island_rows(fn, out_specs):
    """fn on each device's own rows with the whole unembedding, when the island spans several devices:
    one all-gather of w and the rows stay put, instead of leaving a chunk loop over sharded rows to GSPMD.
    Outputs specced P() are sums over the devices."""
    mesh = jax.sharding.get_abstract_mesh()
    if "fsdp" not in mesh.axis_names or mesh.shape["fsdp"] == 1:
        return fn

    def body(h, w, t):
        outs = fn(h, w, t)
        if isinstance(out_specs, P):
            return jax.lax.psum(outs, "fsdp") if out_specs == P() else outs
        return tuple(jax.lax.psum(o, "fsdp") if spec == P() else o for o, spec in zip(outs, out_specs))

    return jax.shard_map(body, in_specs=(P("fsdp"), P(), P("fsdp")), out_specs=out_specs, axis_names={"fsdp"})


def _logits(h_CD, w_DV, softcap):
    logits = (h_CD @ w_DV).astype(jnp.float32)
    if softcap is None:
        return logits, None
    t = jnp.tanh(logits / softcap)
    return softcap * t, t


def _chunk_nats(h_CD, w_DV, t_C, softcap):
    return token_nats(_logits(h_CD, w_DV, softcap)[0], t_C)


def _chunks(n: int, vocab: int) -> int:
    """Rows per chunk: the largest divisor of n with at most CHUNK_LOGITS logits."""
    rows = max(1, min(n, CHUNK_LOGITS // vocab))
    return next(c for c in range(rows, 0, -1) if n % c == 0)


def _chunked(fn, h_ND, w_DV, t_N, softcap):
    c = _chunks(h_ND.shape[0], w_DV.shape[1])
    out = jax.lax.map(lambda xs: fn(xs[0], w_DV, xs[1], softcap), (h_ND.reshape(-1, c, h_ND.shape[1]), t_N.reshape(-1, c)))
    return out.reshape(-1)


def _loss_and_grads(h_ND, w_DV, t_N, softcap, n_total):
    """(sum of nats / n_total, its gradients in h and w) over these rows, chunk by chunk."""
    c, (n, d), v = _chunks(h_ND.shape[0], w_DV.shape[1]), h_ND.shape, w_DV.shape[1]

    def chunk(dw_DV, xs):
        h_CD, t_C = xs
        z, t = _logits(h_CD, w_DV, softcap)
        lse = jax.nn.logsumexp(z, axis=-1)
        nats = lse - jnp.take_along_axis(z, t_C[:, None], axis=-1)[:, 0]
        dz = (jnp.exp(z - lse[:, None]) - jax.nn.one_hot(t_C, v, dtype=z.dtype)) / n_total  # softmax - onehot
        dlogits = (dz if t is None else dz * (1 - t * t)).astype(h_CD.dtype)  # d softcap*tanh(x/softcap)
        return dw_DV + (h_CD.T @ dlogits).astype(jnp.float32), (jnp.sum(nats), dlogits @ w_DV.T)

    hs, ts = h_ND.reshape(-1, c, d), t_N.reshape(-1, c)
    dw, (first_sum, first_dh) = chunk(0.0, (hs[0], ts[0]))  # the carry starts from a chunk: it varies as they do
    dw, (sums, dh) = jax.lax.scan(chunk, dw, (hs[1:], ts[1:]))
    loss = (first_sum + jnp.sum(sums)) / n_total
    return loss, jnp.concatenate([first_dh[None], dh]).reshape(n, d), dw.astype(w_DV.dtype)
