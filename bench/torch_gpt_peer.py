#!/usr/bin/env python3
"""Peer benchmark: a nanochat-equivalent GPT pretraining step in plain PyTorch.

The reference point for jaximus's own benchmark, at the same shapes: one
training step (forward, backward, grad clip, optimizer step, zero_grad) of a
GPT shaped like nanochat's original (Oct 2025) model, timed on random tokens.
It is written from the architecture description and does not import nanochat.

Architecture (per nanochat's d-series recipe):
  * model_dim = depth * 64, heads = ceil(model_dim / 128) (head_dim 128 for
    depths that are multiples of 2), kv heads = heads
  * token embedding (untied from the head) -> parameter-free RMSNorm
  * per block: x += attn(rmsnorm(x)); x += mlp(rmsnorm(x))
      attn: q/k/v/out linears without bias; rotary (base 10000, half-split)
            applied to q and k, then RMSNorm on q and k; causal SDPA
      mlp:  4x expansion, ReLU^2, no bias
  * final RMSNorm -> lm_head (no bias) -> logit softcap 15*tanh(z/15) -> CE
Optimizers:
  * Muon (Nesterov momentum 0.95, 5 Newton-Schulz steps with coefficients
    3.4445, -4.7750, 2.0315, computed in bf16) for the 2-D block matrices
  * AdamW (betas 0.8/0.95, eps 1e-10, no weight decay, fused) for the
    embedding and the lm_head, lr scaled by (model_dim/768)^-0.5
Precision:
  * --amp none: everything fp32 (the rotary tables stay bf16, like nanochat's)
  * --amp bf16: CPU bf16 autocast, embedding table stored in bf16 (nanochat's
    recipe; on GPU it autocasts to bf16 the same way)

The last line printed is
  tokens_per_sec=<float> step_s=<float> flops_per_token=<int>
where step_s is the median of the timed steps and flops_per_token is
6 * (non-embedding params) + 12 * layers * heads * head_dim * seq.
"""
from __future__ import annotations

import argparse
import contextlib
import json
import math
import statistics
import time

import torch
import torch.nn as nn
import torch.nn.functional as F

# ----------------------------------------------------------------------------- model

def rms(x: torch.Tensor) -> torch.Tensor:
    """RMSNorm over the last dim, no learnable gain."""
    return F.rms_norm(x, (x.shape[-1],))


def rotate_half_split(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotary embedding on (B, T, H, D): pair dim i with dim i + D/2."""
    half = x.shape[-1] // 2
    a, b = x[..., :half], x[..., half:]
    out = torch.cat((a * cos + b * sin, b * cos - a * sin), dim=-1)
    return out.to(x.dtype)


class Attention(nn.Module):
    def __init__(self, dim: int, n_head: int, n_kv_head: int):
        super().__init__()
        assert dim % n_head == 0 and n_head % n_kv_head == 0
        self.n_head, self.n_kv_head, self.hd = n_head, n_kv_head, dim // n_head
        self.wq = nn.Linear(dim, n_head * self.hd, bias=False)
        self.wk = nn.Linear(dim, n_kv_head * self.hd, bias=False)
        self.wv = nn.Linear(dim, n_kv_head * self.hd, bias=False)
        self.wo = nn.Linear(dim, dim, bias=False)

    def forward(self, x, cos, sin):
        B, T, _ = x.shape
        q = self.wq(x).view(B, T, self.n_head, self.hd)
        k = self.wk(x).view(B, T, self.n_kv_head, self.hd)
        v = self.wv(x).view(B, T, self.n_kv_head, self.hd)
        q = rms(rotate_half_split(q, cos, sin))
        k = rms(rotate_half_split(k, cos, sin))
        q, k, v = (t.transpose(1, 2) for t in (q, k, v))  # (B, H, T, D)
        if self.n_kv_head != self.n_head:
            rep = self.n_head // self.n_kv_head
            k = k.repeat_interleave(rep, dim=1)
            v = v.repeat_interleave(rep, dim=1)
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        return self.wo(y.transpose(1, 2).reshape(B, T, -1))


class FeedForward(nn.Module):
    def __init__(self, dim: int):
        super().__init__()
        self.up = nn.Linear(dim, 4 * dim, bias=False)
        self.down = nn.Linear(4 * dim, dim, bias=False)

    def forward(self, x):
        return self.down(F.relu(self.up(x)).square())


class Layer(nn.Module):
    def __init__(self, dim, n_head, n_kv_head):
        super().__init__()
        self.attn = Attention(dim, n_head, n_kv_head)
        self.ff = FeedForward(dim)

    def forward(self, x, cos, sin):
        x = x + self.attn(rms(x), cos, sin)
        return x + self.ff(rms(x))


class PeerGPT(nn.Module):
    def __init__(self, vocab: int, depth: int, dim: int, n_head: int, n_kv_head: int,
                 seq: int, softcap: float = 15.0, rope_base: float = 10000.0):
        super().__init__()
        self.vocab, self.depth, self.dim, self.n_head, self.seq = vocab, depth, dim, n_head, seq
        self.softcap = softcap
        self.embed = nn.Embedding(vocab, dim)
        self.layers = nn.ModuleList(Layer(dim, n_head, n_kv_head) for _ in range(depth))
        self.head = nn.Linear(dim, vocab, bias=False)
        hd = dim // n_head
        inv = rope_base ** (-torch.arange(0, hd, 2, dtype=torch.float32) / hd)
        ang = torch.outer(torch.arange(seq, dtype=torch.float32), inv)
        # tables kept in bf16 (as nanochat does), shaped to broadcast over (B, T, H, D/2)
        self.register_buffer("cos", ang.cos().bfloat16()[None, :, None, :], persistent=False)
        self.register_buffer("sin", ang.sin().bfloat16()[None, :, None, :], persistent=False)
        self.reset_parameters()

    @torch.no_grad()
    def reset_parameters(self):
        nn.init.normal_(self.embed.weight, std=1.0)
        for m in self.layers.modules():
            if isinstance(m, nn.Linear):
                fan_out, fan_in = m.weight.shape
                nn.init.normal_(m.weight, std=min(1.0, math.sqrt(fan_out / fan_in)) / math.sqrt(fan_in))
        for layer in self.layers:  # residual-branch outputs start at zero
            nn.init.zeros_(layer.attn.wo.weight)
            nn.init.zeros_(layer.ff.down.weight)
        nn.init.zeros_(self.head.weight)

    def flops_per_token(self) -> int:
        n = sum(p.numel() for p in self.parameters()) - self.embed.weight.numel()
        return 6 * n + 12 * self.depth * self.n_head * (self.dim // self.n_head) * self.seq

    def forward(self, idx, targets):
        T = idx.shape[1]
        cos, sin = self.cos[:, :T], self.sin[:, :T]
        x = rms(self.embed(idx))
        for layer in self.layers:
            x = layer(x, cos, sin)
        z = self.head(rms(x))
        z = self.softcap * torch.tanh(z / self.softcap)
        return F.cross_entropy(z.float().view(-1, z.shape[-1]), targets.view(-1))


# ----------------------------------------------------------------------------- optimizers

@torch.compile(dynamic=False)
def orthogonalize(g: torch.Tensor, steps: int = 5, dtype: torch.dtype = torch.bfloat16) -> torch.Tensor:
    """Quintic Newton-Schulz iteration towards the nearest semi-orthogonal matrix (bf16, as nanochat)."""
    a, b, c = 3.4445, -4.7750, 2.0315
    x = g.to(dtype)
    tall = x.shape[-2] > x.shape[-1]
    if tall:
        x = x.mT
    x = x / (x.norm() + 1e-7)
    for _ in range(steps):
        s = x @ x.mT
        x = a * x + (b * s + c * (s @ s)) @ x
    return x.mT if tall else x


class Muon(torch.optim.Optimizer):
    """SGD with Nesterov momentum whose 2-D update is orthogonalized by Newton-Schulz."""

    def __init__(self, params, lr=0.02, momentum=0.95, ns_steps=5, ns_dtype=torch.bfloat16):
        super().__init__(list(params), dict(lr=lr, momentum=momentum, ns_steps=ns_steps))
        self.ns_dtype = ns_dtype

    @torch.no_grad()
    def step(self):
        for group in self.param_groups:
            mu = group["momentum"]
            for p in group["params"]:
                if p.grad is None:
                    continue
                st = self.state[p]
                if "buf" not in st:
                    st["buf"] = torch.zeros_like(p.grad)
                buf = st["buf"]
                buf.lerp_(p.grad, 1 - mu)
                upd = orthogonalize(p.grad.lerp_(buf, mu), group["ns_steps"], self.ns_dtype)  # Nesterov
                scale = max(1.0, p.shape[-2] / p.shape[-1]) ** 0.5
                p.add_(upd, alpha=-group["lr"] * scale)


def make_optimizers(model: PeerGPT, embed_lr=0.2, head_lr=0.004, matrix_lr=0.02, ns_dtype=torch.bfloat16):
    lr_scale = (model.dim / 768) ** -0.5
    adamw = torch.optim.AdamW(
        [dict(params=[model.head.weight], lr=head_lr * lr_scale),
         dict(params=[model.embed.weight], lr=embed_lr * lr_scale)],
        betas=(0.8, 0.95), eps=1e-10, weight_decay=0.0, fused=True)
    muon = Muon(model.layers.parameters(), lr=matrix_lr, momentum=0.95, ns_dtype=ns_dtype)
    return [adamw, muon]


# ----------------------------------------------------------------------------- benchmark

def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--depth", type=int, default=4)
    ap.add_argument("--dim", type=int, default=0, help="model dim (default depth*64)")
    ap.add_argument("--seq", type=int, default=256)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--vocab", type=int, default=8192)
    ap.add_argument("--steps", type=int, default=10, help="timed steps")
    ap.add_argument("--warmup", type=int, default=3, help="untimed steps (include compile)")
    ap.add_argument("--compile", type=int, nargs="?", const=1, default=0,
                    help="torch.compile the model (--compile or --compile 1)")
    ap.add_argument("--amp", choices=["none", "bf16"], default="none")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--ns-dtype", choices=["bf16", "fp32"], default="bf16",
                    help="Muon Newton-Schulz dtype; fp32 on CPUs without native bf16 (no AVX512_BF16/AMX)")
    ap.add_argument("--grad-clip", type=float, default=1.0, help="0 disables (nanochat uses 1.0)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--json", action="store_true", help="also print a JSON line of all stats")
    args = ap.parse_args()

    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    dim = args.dim or args.depth * 64
    heads = max(1, -(-dim // 128))
    model = PeerGPT(args.vocab, args.depth, dim, heads, heads, args.seq)
    if args.amp == "bf16":
        model.embed.to(torch.bfloat16)
    optimizers = make_optimizers(model, ns_dtype=torch.float32 if args.ns_dtype == "fp32" else torch.bfloat16)
    fpt = model.flops_per_token()
    run = torch.compile(model, dynamic=False) if args.compile else model
    amp = (torch.autocast("cpu", dtype=torch.bfloat16) if args.amp == "bf16"
           else contextlib.nullcontext())

    gen = torch.Generator().manual_seed(args.seed)
    data = [(torch.randint(0, args.vocab, (args.batch, args.seq), generator=gen),
             torch.randint(0, args.vocab, (args.batch, args.seq), generator=gen)) for _ in range(4)]

    def train_step(i):
        x, y = data[i % len(data)]
        with amp:
            loss = run(x, y)
        loss.backward()
        if args.grad_clip > 0:
            torch.nn.utils.clip_grad_norm_(model.parameters(), args.grad_clip)
        for opt in optimizers:
            opt.step()
        model.zero_grad(set_to_none=True)
        return loss.item()

    warm, timed, losses = [], [], []
    for i in range(args.warmup + args.steps):
        t0 = time.perf_counter()
        losses.append(train_step(i))
        (warm if i < args.warmup else timed).append(time.perf_counter() - t0)

    step_s = statistics.median(timed)
    toks = args.batch * args.seq
    if args.json:
        print(json.dumps(dict(
            impl="peer", depth=args.depth, dim=dim, heads=heads, seq=args.seq, batch=args.batch,
            vocab=args.vocab, compile=args.compile, amp=args.amp, threads=args.threads,
            nparams=sum(p.numel() for p in model.parameters()), flops_per_token=fpt,
            step_s=step_s, step_min=min(timed), step_max=max(timed), tokens_per_sec=toks / step_s,
            gflops=fpt * toks / step_s / 1e9, first_step_s=warm[0] if warm else None,
            warm_times=warm, times=timed, compile_overhead_s=(warm[0] - step_s) if warm else None,
            loss_first=losses[0], loss_last=losses[-1])))
    print(f"tokens_per_sec={toks / step_s:.1f} step_s={step_s:.4f} flops_per_token={fpt}")


if __name__ == "__main__":
    main()
