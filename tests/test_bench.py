"""The benchmark's figures, at the tiny size: every one it reports is there and consistent (not timed)."""
from conftest import ROOT, TINY

from jaximus.bench import measure, summary, with_syncs

DILOCO = str(ROOT / "experiments" / "diloco_nanochat" / "config.py")


def test_measure_reports_step_phases_sync_eval_and_memory():
    r = measure(DILOCO, [*TINY, "outer.sync_every=2"], steps=2)
    assert r["mesh"] == "4x2" and r["sync_groups"] == ["params"]
    assert 0 < r["phases_s"]["forward"] < r["phases_s"]["forward+backward"]
    assert r["step_s"] > 0 and r["sync_s"] > 0 and r["eval_s"] > 0 and r["first_step_s"] > r["step_s"]
    assert r["tokens_per_sec"] == 16 * 32 / r["step_s"] and 0 < r["mfu"] < 1
    assert r["eval_tokens"] == 1024 and r["peak_rss_bytes"] > 2**20
    assert r["loader_tokens_per_sec"] > 0 and r["loader_first_batch_s"] > 0
    rows = [{**r, "mesh": "1x1", "tokens_per_sec": 2 * r["tokens_per_sec"]}, r]
    assert summary(rows) == ["4x2 vs 1 device, float32, depth 2: 0.50x tokens/s"]
    peer = {"impl": "torch peer (compiled)", "dtype": "none", "depth": 2, "tokens_per_sec": r["tokens_per_sec"]}
    assert summary([*rows, peer])[1:] == ["1x1 vs the PyTorch peer, float32, depth 2: 2.00x tokens/s",
                                          "4x2 vs the PyTorch peer, float32, depth 2: 1.00x tokens/s"]
    # the island-simulating peer runs at the row's own shapes and is compared over whole rounds, syncs included
    assert (r["seq"], r["batch"], r["sync_every"]) == (32, 16, 2)
    assert abs(with_syncs(r) - 16 * 32 * 2 / (2 * r["step_s"] + r["sync_s"])) < 1e-6 * with_syncs(r)
    islands = {"impl": "torch islands peer", "dtype": "none", "depth": 2, "islands": 4,
               "tokens_per_sec": with_syncs(r) / 2}
    assert summary([*rows, islands])[1:] == ["4x2 vs the island-simulating peer, float32, depth 2: "
                                             "2.00x island-tokens/s, syncs included"]


def test_newton_schulz_flops_count_every_muon_matrix(nanochat, tiny_cfg):
    from jaximus.bench import newton_schulz_flops
    cfg = tiny_cfg()  # depth 2, width 128: per layer four 128 x 128 attention matrices and the 128 x 512 MLP pair
    per_iteration = 2 * (4 * 6 * 128**3 + 2 * (4 * 128 * 128 * 512 + 2 * 128**3))
    assert newton_schulz_flops(cfg, nanochat) == 5 * per_iteration
