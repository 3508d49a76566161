#!/usr/bin/env python3
"""Peer benchmark: R DiLoCo islands simulated on one machine in plain PyTorch, the way exo gym does.

exo gym (github.com/exo-explore/gym) simulates a node as a process: R processes on one host joined by a
gloo process group, each holding its own copy of the model and its own inner optimizers, stepping on its
own rows; every H local steps each averages the parameters by all-reduce, rank 0 takes the outer step
(Nesterov SGD on master - mean, its DiLoCo defaults lr 0.7, momentum 0.9) and broadcasts the result. This
script, our own, follows that design with the nanochat model and optimizers of torch_gpt_peer.py, so
jaximus's simulated islands are timed against what a researcher would otherwise run on a laptop.

The global batch (--batch rows) is split over the islands, as in jaximus. Timed: --rounds whole rounds of
H inner steps and one sync, after --warmup steps (compile included). Each process gets --threads intra-op
threads (default: the machine's cores / R, so R processes do not oversubscribe the cores).

The last line printed (by rank 0) is
  island_tokens_per_sec=<float> step_s=<float> sync_s=<float>
where island_tokens_per_sec counts every island's tokens over the whole timed span, syncs included.
"""
from __future__ import annotations

import argparse
import contextlib
import json
import os
import socket
import statistics
import time

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch_gpt_peer import PeerGPT, make_optimizers


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def outer_sync(model, master, outer_opt, R: int) -> None:
    """DiLoCo's sync as exo gym's communicator does it: mean by all-reduce, outer step on rank 0, broadcast."""
    with torch.no_grad():
        for p in model.parameters():
            dist.all_reduce(p.data, op=dist.ReduceOp.SUM)
            p.data /= R
        if master is not None:
            for m, p in zip(master.parameters(), model.parameters()):
                m.grad = m.data - p.data  # the pseudo-gradient: outer minus the islands' mean
            outer_opt.step()
            for m, p in zip(master.parameters(), model.parameters()):
                p.data.copy_(m.data)
        for p in model.parameters():
            dist.broadcast(p.data, src=0)


def island(rank: int, args, port: int) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=args.islands)
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)  # every island starts from the same weights
    dim = args.depth * 64
    heads = max(1, -(-dim // 128))
    model = PeerGPT(args.vocab, args.depth, dim, heads, heads, args.seq)
    if args.amp == "bf16":
        model.embed.to(torch.bfloat16)
    optimizers = make_optimizers(model, ns_dtype=torch.float32 if args.ns_dtype == "fp32" else torch.bfloat16)
    master = outer_opt = None
    if rank == 0:
        master = PeerGPT(args.vocab, args.depth, dim, heads, heads, args.seq)
        master.load_state_dict(model.state_dict())
        outer_opt = torch.optim.SGD(master.parameters(), lr=0.7, momentum=0.9, nesterov=True)
    run = torch.compile(model, dynamic=False) if args.compile else model
    amp = torch.autocast("cpu", dtype=torch.bfloat16) if args.amp == "bf16" else contextlib.nullcontext()
    rows = args.batch // args.islands
    gen = torch.Generator().manual_seed(args.seed + 1 + rank)  # each island its own rows
    data = [torch.randint(0, args.vocab, (rows, args.seq + 1), generator=gen) for _ in range(4)]
    data = [(x[:, :-1].contiguous(), x[:, 1:].contiguous()) for x in data]

    def step(i: int) -> None:
        x, y = data[i % len(data)]
        with amp:
            loss = run(x, y)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        for opt in optimizers:
            opt.step()
        model.zero_grad(set_to_none=True)

    for i in range(args.warmup):
        step(i)
    outer_sync(model, master, outer_opt, args.islands)
    dist.barrier()
    steps, syncs, start = [], [], time.perf_counter()
    for _ in range(args.rounds):
        for i in range(args.sync_every):
            t = time.perf_counter()
            step(i)
            steps.append(time.perf_counter() - t)
        t = time.perf_counter()
        outer_sync(model, master, outer_opt, args.islands)
        syncs.append(time.perf_counter() - t)
    span = torch.tensor([time.perf_counter() - start])
    dist.all_reduce(span, op=dist.ReduceOp.MAX)  # the slowest island sets the pace
    if rank == 0:
        tokens = args.batch * args.seq * args.sync_every * args.rounds
        stats = dict(impl="torch islands peer", islands=args.islands, sync_every=args.sync_every, depth=args.depth,
                     seq=args.seq, batch=args.batch, vocab=args.vocab, threads=args.threads, compile=args.compile,
                     amp=args.amp, island_tokens_per_sec=tokens / span.item(), span_s=span.item(),
                     step_s=statistics.median(steps), sync_s=statistics.median(syncs))
        if args.json:
            print(json.dumps(stats))
        print(f"island_tokens_per_sec={stats['island_tokens_per_sec']:.1f} step_s={stats['step_s']:.4f} "
              f"sync_s={stats['sync_s']:.4f}", flush=True)
    dist.destroy_process_group()


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--islands", type=int, default=4, help="R: simulated islands, one process each")
    ap.add_argument("--sync-every", type=int, default=10, help="H: inner steps per round")
    ap.add_argument("--rounds", type=int, default=2, help="timed rounds")
    ap.add_argument("--warmup", type=int, default=3, help="untimed inner steps first (compile included)")
    ap.add_argument("--depth", type=int, default=2)
    ap.add_argument("--seq", type=int, default=128)
    ap.add_argument("--batch", type=int, default=16, help="global rows per step, split over the islands")
    ap.add_argument("--vocab", type=int, default=8192)
    ap.add_argument("--compile", type=int, nargs="?", const=1, default=0, help="torch.compile each island's model")
    ap.add_argument("--amp", choices=["none", "bf16"], default="none")
    ap.add_argument("--threads", type=int, default=0, help="intra-op threads per island (0: cores / islands)")
    ap.add_argument("--ns-dtype", choices=["bf16", "fp32"], default="bf16")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--json", action="store_true", help="also print a JSON line of all stats")
    args = ap.parse_args()
    if args.batch % args.islands:
        ap.error(f"--batch {args.batch} does not split over --islands {args.islands}")
    args.threads = args.threads or max(1, (os.cpu_count() or 1) // args.islands)
    mp.spawn(island, args=(args, free_port()), nprocs=args.islands, join=True)


if __name__ == "__main__":
    main()
