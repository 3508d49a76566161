"""The DiLoCo family's published findings as sweeps at laptop scale, each with the rule that judges it.

Every reproduction trains `experiments/diloco_nanochat` at SIZE (2 layers, 2,048 tokens per step, 150
steps) on 4 islands x 2 fake devices unless its points say otherwise, so all points use the same 8
devices and a point two reproductions share (`dp`, `diloco`) runs once. Findings and numbers are from
docs/algorithms.md sections 2 and 4.
"""
from dataclasses import dataclass
from typing import Callable

import numpy as np

# Laptop scale: 75-100 s per point on 2 cores. Scale up with key=value (model.depth=6 max_steps=2000).
SIZE = ("model.depth=2", "data.seq_len=128", "data.batch_size=16", "max_steps=150", "eval.every=25",
        "eval.tokens=16384", "checkpoint.every=50")
SEEDS = (42, 43, 44, 45, 46, 47, 48, 49)  # the preset's seed first (nanochat: 42)
# "Costs little": 2% of val bpb, the scale the DiLoCo paper calls "only" (H = 1,000 vs 50: 2.9% perplexity)
LITTLE = 0.02

DP = ("outer.name='sync'",)
NESTEROV = "outer.optimizer='sgd' outer.nesterov=True"


@dataclass(frozen=True)
class Point:
    label: str  # its run directory and its name in tables and figures
    overrides: tuple[str, ...] = ()
    seeds: int = 1  # how many seeds by default; --seeds N sets every point's
    what: str = ""
    start_from: str = ""  # another point's label: this one starts from that point's run of the same seed


@dataclass(frozen=True)
class Reproduction:
    name: str
    paper: str
    finding: str
    points: tuple[Point, ...]
    judge: Callable  # judge(Results) -> (what we measured, verdict)
    minutes: float  # CPU time at the default size on 2 cores (measured; see docs/reproductions)
    reference: str = "dp"  # the point others are compared against in the table
    curve: str = "tokens"  # what the figure's curves run against: tokens, or time/sim_s (simulated seconds)
    notes: str = ""
    keys: tuple[str, ...] = ()  # keys the points vary (a user override of one is refused)


def _split(text: str) -> tuple[str, ...]:
    return tuple(text.split())


# Seed-to-seed spread comes from these twins: the control and the preset, each trained from two seeds.
NOISE = (Point("dp", DP, seeds=2, what="sync data-parallel"),
         Point("diloco", (), seeds=2, what="DiLoCo, the preset (H = 10, tuned outer Nesterov)"))


# DiLoCo's protocol (2311.08105 section 3): ordinary DP pre-training on i.i.d. data, then DiLoCo from it
PRETRAIN_STEPS = 60  # DP pre-training before DiLoCo: 40% of a continuation, as DiLoCo's 24k steps are of its 64k
PRETRAIN = Point("pretrain", (*DP, f"max_steps={PRETRAIN_STEPS}"), seeds=2,
                 what=f"sync DP on i.i.d. islands, {PRETRAIN_STEPS} steps: the model the other points start from")
DILOCO_IID = Point("diloco_iid", (), seeds=2, start_from="pretrain",
                   what="DiLoCo from the pretrained model, i.i.d. islands")


# ---------- judging ----------

VERDICTS = ("reproduced", "not reproduced", "inconclusive (within seed noise)")


def lower(r, a: str, b: str) -> int:
    """+1 if a's bpb is below b's by more than the seed spread, -1 if above by more, 0 within it."""
    d = r.diff(b, a)
    return 0 if abs(d) <= r.noise else (1 if d > 0 else -1)


def close(r, a: str, b: str, tolerance: float = LITTLE) -> int:
    """+1 if a is within `tolerance` (relative) or the seed spread of b, -1 if worse by more than both."""
    return 1 if r.diff(a, b) <= max(r.noise, tolerance * r.bpb(b)) else -1


def combine(parts: list[int]) -> str:
    """All parts hold -> reproduced; any contradicted -> not reproduced; otherwise inconclusive."""
    if any(p < 0 for p in parts):
        return VERDICTS[1]
    return VERDICTS[0] if all(p > 0 for p in parts) else VERDICTS[2]


def _gap(r, a: str, b: str) -> str:
    return f"{a} {r.bpb(a):.4f} vs {b} {r.bpb(b):.4f} ({r.diff(a, b):+.4f} at equal seeds)"


def judge_scaling_m(r):
    best = {m: best_of_m(r, m) for m in (1, 2, 4, 8)}
    parts = [1 if r.diff(best[1], "dp") <= r.noise else -1]
    parts += [lower(r, best[a], best[b]) for a, b in ((1, 2), (2, 4), (4, 8))]
    gaps = ", ".join(f"M={m} {r.diff(lab, 'dp'):+.4f} ({lab})" for m, lab in best.items())
    return f"gap to DP at each M's best outer lr: {gaps}", combine(parts)


def judge_sync_every(r):
    hs = (5, 10, 25, 50, 100)
    labels = [f"h{h}" if h != 10 else "diloco" for h in hs]
    per_sync = [r.bytes(lab) / r.syncs(lab) for lab in labels]
    one_over_h = all(abs(b / per_sync[0] - 1) < 0.01 for b in per_sync)  # bytes = syncs x one full payload
    parts = [1 if one_over_h else -1]
    parts += [-1 if lower(r, b, a) > 0 else 1 for a, b in zip(labels, labels[1:])]  # never better at larger H
    parts.append(close(r, labels[-1], labels[0], tolerance=0.1))  # graceful: H x 20 costs under 10%
    bytes_text = ", ".join(f"H={h} {r.bytes(lab) / 2**20:.1f}" for h, lab in zip(hs, labels))
    bpb_text = ", ".join(f"H={h} {r.bpb(lab):.4f}" for h, lab in zip(hs, labels))
    rise = r.diff(labels[-1], labels[0]) / r.bpb(labels[0])
    return (f"bpb {bpb_text} (DP {r.bpb('dp'):.4f}): H = 100 is {rise:+.1%} on H = 5; MiB per island {bytes_text}, "
            f"{'the same' if one_over_h else 'not the same'} bytes per sync"), combine(parts)


def judge_outer_opt(r):
    grid = [p for p in r.labels if p.startswith("nesterov")]
    best = min(grid, key=r.bpb)
    parts = [lower(r, best, "sgd_avg"), lower(r, best, "adam")]
    band = [p for p in grid if r.diff(p, best) <= r.noise]
    return (f"best Nesterov {best} {r.bpb(best):.4f}; averaging {r.bpb('sgd_avg'):.4f}; Adam {r.bpb('adam'):.4f}; "
            f"within seed noise of the best: {', '.join(band)}"), combine(parts)


def judge_desloc(r):
    ratio = r.bytes("desloc") / r.bytes("local_adam")
    parts = [1 if 0.35 <= ratio <= 0.65 else -1, close(r, "desloc", "local_adam")]
    return (f"DES-LOC sends {ratio:.2f}x Local Adam's bytes; {_gap(r, 'desloc', 'local_adam')}; "
            f"DiLoCo {r.bpb('diloco'):.4f}"), combine(parts)


def judge_streaming(r):
    steps = ("streaming", "streaming_overlap", "streaming_overlap_fp4")
    parts = [close(r, s, "diloco") for s in steps] + [lower(r, "eager", "naive_delayed")]
    costs = ", ".join(f"{s} {r.diff(s, 'diloco'):+.4f}" for s in steps)
    return f"vs DiLoCo: {costs}; {_gap(r, 'eager', 'naive_delayed')}", combine(parts)


def judge_compression(r):
    parts = [close(r, "int8", "diloco"), close(r, "fp4", "diloco"), lower(r, "topk_ef", "topk")]
    wire = ", ".join(f"{p} {r.wire(p) / r.wire('diloco'):.3f}" for p in ("int8", "fp4", "topk_ef"))
    return (f"vs none: int8 {r.diff('int8', 'diloco'):+.4f}, fp4 {r.diff('fp4', 'diloco'):+.4f}; "
            f"{_gap(r, 'topk_ef', 'topk')}; wire bytes vs none: {wire}"), combine(parts)


def judge_non_iid(r):
    return (f"from a DP-pretrained model: {_gap(r, 'diloco_topic', 'diloco_iid')}; DP {r.bpb('dp_cont'):.4f}; "
            f"the pretrained model {r.bpb('pretrain'):.4f}"), combine([close(r, "diloco_topic", "diloco_iid")])


def judge_dropout(r):
    labels = ["dropout_10", "dropout_25", "dropout_50"]
    parts = [close(r, lab, "diloco_iid") for lab in labels]
    text = ", ".join(f"{p.split('_')[-1]}% {r.diff(p, 'diloco_iid'):+.4f}" for p in labels)
    return (f"from a DP-pretrained model, vs no dropout ({r.bpb('diloco_iid'):.4f}), at equal seeds: {text}",
            combine(parts))


def bpb_at_time(r, label: str, seconds: float) -> float:
    """A point's val bpb at a simulated time, linear between its evaluations (first seed)."""
    evals = r.runs[label][0].evals
    return float(np.interp(seconds, [e["time/sim_s"] for e in evals], [e["val/bpb"] for e in evals]))


def sim_s(r, label: str) -> float:
    return r.runs[label][0].evals[-1]["time/sim_s"]


def judge_heterogeneous(r):
    best, sync = "async_dn_dylu", "diloco_het"
    at_best_end = bpb_at_time(r, sync, sim_s(r, best))
    parts = [lower(r, "async_dn", "async_nesterov"), close(r, best, sync), 1 if sim_s(r, best) < sim_s(r, sync) else -1,
             1 if r.bpb(best) < at_best_end - r.noise else -1]
    points = ", ".join(f"{lab} {r.bpb(lab):.4f} in {sim_s(r, lab):.0f} s" for lab in r.labels)
    return (f"at equal tokens: {points}; at {sim_s(r, best):.0f} simulated s, when {best} ends, synchronous DiLoCo is "
            f"at {at_best_end:.4f}"), combine(parts)


HET = "islands.step_s=(1.0,1.0,2.0,4.0)"  # speeds like 2401.09135's heterogeneous workers: a 4x spread
DYLU = "islands.dynamic_local_steps=True"
PAPER = ("outer.lr=0.7", "outer.momentum=0.9")  # the papers' outer Nesterov: the stale momentum is the problem
# max_steps for equal tokens (150 x 2,048): an asynchronous program step runs only the islands with work
# left, so it trains fewer tokens than a lockstep one; from the dry run (python -m jaximus.inspect --timeline)
ASYNC_STEPS, DYLU_STEPS, ASYNC_DYLU_STEPS = 214, 222, 217


# ---------- the reproductions ----------

def _nesterov_grid():
    return tuple(Point(f"nesterov_lr-{lr}_mom-{mom}", _split(f"{NESTEROV} outer.lr={lr} outer.momentum={mom}"),
                       seeds=2 if (lr, mom) == (0.7, 0.9) else 1, what=f"Nesterov lr {lr}, momentum {mom}")
                 for lr in (0.4, 0.7, 1.0, 1.3) for mom in (0.3, 0.6, 0.9))


def _islands(m: int, lr: float) -> Point:
    """DiLoCo on m islands at outer lr `lr` (the preset's momentum); lr 1.0 is the preset's own."""
    label, lr_key = (f"m{m}", "") if lr == 1.0 else (f"m{m}_lr-{lr}", f" outer.lr={lr}")
    return Point(label, _split(f"parallel.replica={m} parallel.fsdp={8 // m}{lr_key}"),
                 what=f"DiLoCo, {m} island(s) x {8 // m} devices, outer lr {lr}")


# M = 4 is the preset: its lr 1.0 is `diloco`, its other lrs are outer_opt's momentum-0.3 points
SCALING_LRS = (0.4, 0.7, 1.0)
M4 = {0.4: "nesterov_lr-0.4_mom-0.3", 0.7: "nesterov_lr-0.7_mom-0.3", 1.0: "diloco"}


def _scaling_points():
    points = [_islands(m, lr) for m in (1, 2, 8) for lr in SCALING_LRS]
    points += [Point(M4[lr], _split(f"{NESTEROV} outer.lr={lr} outer.momentum=0.3"),
                     what=f"DiLoCo, 4 islands x 2 devices, outer lr {lr}") for lr in SCALING_LRS if lr != 1.0]
    return (*NOISE, *points)


def best_of_m(r, m: int) -> str:
    """The label of M islands' best outer lr (the paper tunes it per M)."""
    return min((M4[lr] if m == 4 else _islands(m, lr).label for lr in SCALING_LRS), key=r.bpb)


REPRODUCTIONS = {r.name: r for r in (
    Reproduction(
        "outer_opt", "DiLoCo 2311.08105; Scaling Laws for DiLoCo 2503.09799",
        "Outer Nesterov beats plain parameter averaging (SGD lr 1) and outer Adam; good outer lrs form a band "
        "(about 0.6 at M = 4, H = 30).",
        (*_nesterov_grid(),
         Point("sgd_avg", _split("outer.optimizer='sgd' outer.lr=1.0 outer.momentum=0.0 outer.nesterov=False"),
               what="outer SGD lr 1, no momentum: parameter averaging (FedAvg)"),
         Point("adam", _split("outer.optimizer='adam' outer.lr=0.003 outer.optimizer_kwargs={'b1':0.9,'b2':0.95}"),
               what="outer Adam lr 3e-3, betas (0.9, 0.95)")),
        judge_outer_opt, minutes=22, reference="nesterov_lr-0.7_mom-0.9",
        keys=("outer.optimizer", "outer.lr", "outer.momentum", "outer.nesterov", "outer.optimizer_kwargs")),
    Reproduction(
        "scaling_m", "Scaling Laws for DiLoCo 2503.09799 (Table 4)",
        "At equal tokens and global batch, DiLoCo with M = 1 is at or below DP's loss, and the gap to DP grows "
        "with M = 2, 4, 8.",
        _scaling_points(),
        judge_scaling_m, minutes=20, notes="As in the paper, the outer lr is tuned per M (0.4, 0.7, 1.0, with the "
        "preset's Nesterov momentum 0.3, tuned at M = 4 by outer_opt) and each M is judged at its best.",
        keys=("parallel.replica", "parallel.fsdp", "outer.lr", "outer.momentum", "outer.optimizer",
              "outer.nesterov")),
    Reproduction(
        "sync_every", "DiLoCo 2311.08105",
        "Loss degrades gracefully as H grows from 5 to 100 (never better at a larger H; H = 100 within 10% of "
        "H = 5) while the bytes fall as 1/H.",
        (*NOISE, *(Point(f"h{h}", (f"outer.sync_every={h}",), what=f"DiLoCo H = {h}") for h in (5, 25, 50, 100))),
        judge_sync_every, minutes=11, keys=("outer.sync_every",)),
    Reproduction(
        "desloc", "DES-LOC 2505.22549; Local Adam 2409.13155",
        "DES-LOC (K_u = 3 K_x, K_v = 6 K_x) reaches about Local Adam's loss with about half its bytes.",
        (*NOISE, Point("desloc", ("outer.name='desloc'",), what="DES-LOC, K_x = 10, ADOPT inner"),
         Point("local_adam", ("outer.name='local_adam'", "optimizer.adam='adopt'"),
               what="Local Adam, K = 10: parameters and both moments averaged, ADOPT inner")),
        judge_desloc, minutes=8, keys=("outer.name", "optimizer.adam")),
    Reproduction(
        "streaming", "Streaming DiLoCo 2501.18512; Eager updates 2502.12996",
        "Fragments, a tau = 1 overlap and FP4 pseudo-gradients each cost little loss against DiLoCo; eager "
        "updates beat the naive delayed outer step.",
        (*NOISE,
         Point("streaming", _split("outer.name='streaming_diloco' outer.fragments=2 outer.overlap_steps=0"),
               what="2 strided fragments, no overlap"),
         Point("streaming_overlap", _split("outer.name='streaming_diloco' outer.fragments=2 outer.overlap_steps=1"),
               what="2 fragments, tau = 1"),
         Point("streaming_overlap_fp4", _split("outer.name='streaming_diloco' outer.fragments=2 outer.overlap_steps=1 "
                                               "outer.compress.format='fp4_e3m0'"), what="2 fragments, tau = 1, FP4 E3M0"),
         Point("naive_delayed", _split("outer.name='streaming_diloco' outer.fragments=1 outer.overlap_steps=10"),
               what="the whole round overlapped, stale mean applied (naive delay)"),
         Point("eager", ("outer.eager=True",), what="the whole round overlapped, eager updates")),
        judge_streaming, minutes=13,
        keys=("outer.name", "outer.fragments", "outer.overlap_steps", "outer.compress.format", "outer.eager")),
    Reproduction(
        "compression", "Streaming DiLoCo 2501.18512; MuLoCo 2505.23725; SparseLoCo 2508.15706",
        "4-bit (and 8-bit) pseudo-gradients are about lossless; chunked top-k needs error feedback.",
        (*NOISE, Point("int8", ("outer.compress.format='int8'",), what="int8, block 128"),
         Point("fp4", ("outer.compress.format='fp4_e2m1'",), what="FP4 E2M1, block 128"),
         Point("topk", _split("outer.compress.format='topk' outer.compress.error_feedback=False"),
               what="top-64 of 4,096, 2-bit values, no error feedback"),
         Point("topk_ef", _split("outer.compress.format='topk' outer.compress.error_feedback=True "
                                 "outer.compress.ef_decay=0.95"), what="top-64 of 4,096, 2-bit values, EF decay 0.95")),
        judge_compression, minutes=11, reference="diloco",
        keys=("outer.compress.format", "outer.compress.error_feedback", "outer.compress.ef_decay")),
    Reproduction(
        "non_iid", "DiLoCo 2311.08105",
        "DiLoCo is robust to non-i.i.d. islands: islands holding disjoint topics train about as well as i.i.d. ones.",
        (PRETRAIN, DILOCO_IID,
         Point("diloco_topic", ("data.island_split='topic'",), seeds=2, start_from="pretrain",
               what="DiLoCo from the pretrained model, each island holding whole stdlib packages"),
         Point("dp_cont", DP, start_from="pretrain", what="sync DP from the pretrained model, i.i.d. (for reference)")),
        judge_non_iid, minutes=8, reference="diloco_iid",
        notes="DiLoCo's protocol (2311.08105 section 3): ordinary data-parallel pre-training on i.i.d. data "
        f"({PRETRAIN_STEPS} steps here; the paper's 24k of 88k), then DiLoCo from that checkpoint "
        "(run.start_from) on islands holding disjoint topics or i.i.d. data, each continuation a fresh "
        "150-step run (fresh optimizer state and learning-rate schedule; the same seed's pretrained model). "
        "Topic islands here are whole stdlib packages (one island reads only test/, another asyncio, email, ...), "
        "farther apart than the paper's k-means clusters of C4.",
        keys=("data.island_split", "run.start_from")),
    Reproduction(
        "dropout", "DiLoCo 2311.08105",
        "DiLoCo is robust to dropped outer gradients: islands missing 10, 25 or 50% of syncs cost little loss.",
        (PRETRAIN, DILOCO_IID, *(Point(f"dropout_{p}", (f"faults.island_dropout={p / 100}",), start_from="pretrain",
                                       what=f"from the pretrained model, each island misses a sync with probability {p}%")
                                 for p in (10, 25, 50))),
        judge_dropout, minutes=9, reference="diloco_iid", keys=("faults.island_dropout", "run.start_from"),
        notes="As every DiLoCo run of 2311.08105, each point continues a model pretrained with ordinary data "
        f"parallelism ({PRETRAIN_STEPS} DP steps, the points shared with non_iid). An island that misses a "
        "sync sends nothing; the mean is over the islands present, and every island, the absent one included, "
        "continues from its result; the outer lr and momentum are the preset's, not retuned."),
    Reproduction(
        "heterogeneous", "Async Local-SGD 2401.09135",
        "With islands at different speeds, naive asynchronous Nesterov (one outer step per arrival) is worse than "
        "Delayed Nesterov; Delayed Nesterov with dynamic local updates is about synchronous DiLoCo per token "
        "while finishing sooner in wall-clock, so it is ahead at equal simulated time.",
        (Point("diloco_het", (HET, *PAPER), seeds=2, what="synchronous DiLoCo, H = 10: every sync waits for the slowest"),
         Point("dylu", (HET, *PAPER, DYLU, "islands.merge='tokens'", f"max_steps={DYLU_STEPS}"),
               what="synchronous DiLoCo, dynamic local updates (10, 10, 5, 2), merged by tokens"),
         Point("async_nesterov", (HET, "outer.name='async_diloco'", "outer.lr=0.175", "outer.momentum=0.9",
                                  f"max_steps={ASYNC_STEPS}"), what="asynchronous, outer Nesterov per arrival (lr 0.7 / 4)"),
         Point("async_dn", (HET, *PAPER, "outer.name='async_diloco'", "outer.optimizer='delayed_nesterov'",
                            f"max_steps={ASYNC_STEPS}"), what="asynchronous, Delayed Nesterov (N = 4)"),
         Point("async_dn_dylu", (HET, *PAPER, DYLU, "outer.name='async_diloco'", "outer.optimizer='delayed_nesterov'",
                                 f"max_steps={ASYNC_DYLU_STEPS}"),
               what="asynchronous, Delayed Nesterov and dynamic local updates")),
        judge_heterogeneous, minutes=12, reference="diloco_het", curve="time/sim_s",
        notes="Every point runs at simulated step times (1, 1, 2, 4) s on a 1 Gbit/s, 10 ms link, with the "
        "papers' outer Nesterov (lr 0.7, momentum 0.9; Delayed Nesterov's buffer: 4 arrivals) rather than the "
        "preset's tuned 1.0 / 0.3; each trains about 307,200 tokens (its own max_steps). Per-arrival Nesterov takes "
        "lr 0.7 / 4 so a round of four arrivals moves as far as one synchronous step (not tuned further). "
        "The same points at the preset's tuned lr 1.0, momentum 0.3 (per-arrival lr 0.25), measured in the same "
        "sitting: diloco_het 1.9466 (603 s), dylu 1.9270 (232 s), async_nesterov 1.9641, async_dn 1.9752 (241 s), "
        "async_dn_dylu 1.9423 (229 s): with a small outer momentum every asynchronous variant is within 1.5% of "
        "synchronous DiLoCo per token and Delayed Nesterov no longer helps, as the paper's diagnosis (the stale "
        "momentum is the problem) predicts. 15 outer rounds at H = 10 are far from the paper's regime.",
        keys=("outer.name", "outer.optimizer", "outer.lr", "outer.momentum", "islands.step_s",
              "islands.dynamic_local_steps", "islands.merge")),
)}
