"""Compression: codecs against NumPy and ml_dtypes, the compressed mean against a NumPy transcription, the
wire in the compiled program, error feedback's defining property, and the equalities with no compression."""
from types import SimpleNamespace

import jax
import jax.numpy as jnp
import ml_dtypes
import numpy as np
import pytest

from jaximus.compress import Compressor, layout
from jaximus.compress.codecs import FORMATS, dequantize_blocks, pack, quantize_blocks, unpack
from jaximus.inspect import inspect_scheme
from jaximus.islands import per_island
from jaximus.mesh import make_mesh

CASTS = {"fp8_e4m3": ml_dtypes.float8_e4m3fn, "fp8_e5m2": ml_dtypes.float8_e5m2, "fp4_e2m1": ml_dtypes.float4_e2m1fn}
E3M0 = np.array([0.0] + [2.0 ** e for e in range(-6, 1)])  # sign + 3 exponent bits, zero at exponent 0


def settings(**kw):
    base = dict(format="none", block=32, chunk=8, k=4, value_bits=32, error_feedback=False, ef_decay=1.0,
                stochastic=False)
    return SimpleNamespace(**{**base, **kw})


def numpy_quantize(x_blocks, name):
    """Block scaling written from the definition: scale = absmax / largest value, round each entry to nearest."""
    top = {"int8": 127, "int4": 7, "fp8_e4m3": 448, "fp8_e5m2": 57344, "fp4_e2m1": 6, "fp4_e3m0": 1}[name]
    absmax = np.abs(x_blocks).max(-1, keepdims=True)
    scale = np.where(absmax > 0, absmax / np.float32(top), 1).astype(np.float32)
    v = (x_blocks / scale).astype(np.float32)
    if name in CASTS:
        q = v.astype(CASTS[name]).astype(np.float32)
    elif name.startswith("int"):
        q = np.round(v)
    else:
        mags = E3M0[np.abs(np.abs(v)[..., None] - E3M0).argmin(-1)]
        q = np.sign(v) * mags
    return q * scale, scale


@pytest.mark.parametrize("name", sorted(FORMATS))
def test_block_round_trip_matches_numpy_and_its_error_bound(name):
    rng = np.random.default_rng(0)
    x = (rng.standard_normal((64, 32)) * rng.lognormal(0, 2, (64, 1))).astype(np.float32)
    x[3] = 0.0  # an all-zero block decodes to zeros
    codes, scales = quantize_blocks(jnp.asarray(x), FORMATS[name])
    assert codes.dtype == jnp.uint8 and int(codes.max()) < 2 ** FORMATS[name].bits
    ours = np.asarray(dequantize_blocks(codes, scales, FORMATS[name]))
    ref, ref_scale = numpy_quantize(x, name)
    np.testing.assert_allclose(np.asarray(scales), ref_scale[:, 0], rtol=1e-6)
    agree = np.isclose(ours, ref, rtol=1e-6, atol=0)
    assert agree.mean() > 0.999, (name, agree.mean())  # a rare tie or 1-ulp scaled value may round the other way
    grid = FORMATS[name].grid
    v = x / ref_scale  # error bound: half the gap between the two grid values around each entry
    hi = np.clip(np.searchsorted(grid, v), 1, len(grid) - 1)
    assert np.all(np.abs(ours - x) <= (grid[hi] - grid[hi - 1]) / 2 * ref_scale * (1 + 1e-5) + 1e-30)
    assert np.all(ours[3] == 0) and np.all(np.abs(ours).max(-1) == pytest.approx(np.abs(x).max(-1)))


@pytest.mark.parametrize("name", ["int4", "fp4_e3m0"])
def test_stochastic_rounding_is_unbiased(name):
    x = jnp.asarray(np.random.default_rng(1).standard_normal((1, 32)), jnp.float32)
    keys = jax.random.split(jax.random.key(0), 4000)
    draws = jax.vmap(lambda k: dequantize_blocks(*quantize_blocks(x, FORMATS[name], k), FORMATS[name]))(keys)
    nearest = dequantize_blocks(*quantize_blocks(x, FORMATS[name]), FORMATS[name])
    assert float(jnp.abs(draws.mean(0) - x).max()) < 0.25 * float(jnp.abs(nearest - x).max())


@pytest.mark.parametrize("bits", [2, 4, 12])
def test_pack_matches_numpy_packbits(bits):
    codes = np.random.default_rng(bits).integers(0, 2 ** bits, (3, 37))
    bit_rows = ((codes[..., None] >> np.arange(bits)) & 1).reshape(3, -1).astype(np.uint8)
    packed = pack(jnp.asarray(codes, jnp.uint32), bits)
    np.testing.assert_array_equal(packed, np.packbits(bit_rows, axis=-1, bitorder="little"))
    np.testing.assert_array_equal(unpack(packed, bits, 37), codes)


@pytest.mark.parametrize("shape", [(), (5,), (9000,), (3, 70, 130), (2, 64, 64)])
def test_chunks_round_trip_for_any_rank(shape):
    x = jnp.arange(int(np.prod(shape)), dtype=jnp.float32).reshape(shape) + 1
    chunks = layout.to_chunks(x, 64)
    assert chunks.shape == (layout.chunk_count(shape, 64), 64 * 64)
    assert np.asarray(chunks, np.float64).sum() == np.asarray(x, np.float64).sum()  # every entry in one chunk
    np.testing.assert_array_equal(layout.from_chunks(chunks, shape, 64), x)


def island_program(fn, mesh):
    """fn per island on (R, 16, 64) inputs laid out as the state is: the last dim over the island's devices."""
    return jax.jit(per_island(fn, mesh)), jax.NamedSharding(mesh, jax.P("replica", None, "fsdp"))


@pytest.mark.parametrize("weights", [None, [1 / 3, 1 / 3, 0.0, 1 / 3]])
def test_int8_mean_is_the_quantized_all_reduce(weights):
    """Reference: each island's blocks quantized, dequantized and summed in float32, re-quantized, over R;
    with dropout weights, the island that dropped out contributes nothing."""
    mesh = make_mesh(4, 2)
    comp = Compressor(settings(format="int8"), fsdp=2, strategy="fsdp", seed=0)
    x = np.random.default_rng(2).standard_normal((4, 16, 64)).astype(np.float32)
    w = np.asarray(weights or [1.0] * 4, np.float32)
    fn, sharding = island_program(lambda d, wr: comp.mean(d, None, None if weights is None else wr, jnp.int32(0))[0],
                                  mesh)
    with jax.set_mesh(mesh):
        ours = np.asarray(fn(jax.device_put(x, sharding), jax.device_put(w, jax.NamedSharding(mesh, jax.P("replica")))))
    # each device holds a (16, 32) shard (fsdp on the last dim): block = 32 makes each row one block
    shards = x.reshape(4, 16, 2, 32)
    total = sum(w[r] * numpy_quantize(shards[r], "int8")[0] for r in range(4))
    ref = (numpy_quantize(total, "int8")[0] / (4 if weights is None else 1)).reshape(16, 64)
    for r in range(4):  # every island ends with the same mean
        np.testing.assert_allclose(ours[r], ref, rtol=1e-5, atol=1e-7)


def test_blocks_pad_shards_that_a_block_does_not_divide():
    leaves = [jnp.arange(37.0), jnp.arange(250.0).reshape(5, 50)]
    blocks = layout.to_blocks(leaves, 100, 4)
    assert blocks.shape == (4, 1, 100)  # 37 -> 100 and 250 -> 300 entries: one block for each of 4 islands
    for back, x in zip(layout.from_blocks(blocks, [x.shape for x in leaves], 100), leaves, strict=True):
        np.testing.assert_array_equal(back, x)


def drift_to_optimum(error_feedback: bool) -> float:
    """Islands minimizing 0.5 |theta - c_r|^2 (optimum: the mean of c_r), deltas top-k compressed (k = 4 of 64).

    The step decays as error feedback's convergence needs (its buffers shrink with it); without error
    feedback the mean of differently-masked top-k deltas has a biased fixed point whatever the step."""
    mesh = make_mesh(4, 2)
    comp = Compressor(settings(format="topk", error_feedback=error_feedback), fsdp=2, strategy="fsdp", seed=0)
    centres = np.random.default_rng(3).standard_normal((4, 16, 64)).astype(np.float32)

    def run(c):
        def rnd(t, carry):
            theta, e = carry
            mean, e = comp.mean(2.0 / (20 + t) * (theta - c), e, None, t)  # one inner GD step, lr 0.1 decaying
            return theta - mean, e
        theta = jnp.zeros_like(c)
        error = comp.init_error(theta)
        return jax.lax.fori_loop(0, 3000, rnd, (theta, error if error_feedback else None))[0]

    fn, sharding = island_program(run, mesh)
    with jax.set_mesh(mesh):
        theta = np.asarray(fn(jax.device_put(centres, sharding)))
    optimum = centres.mean(0)
    return float(np.linalg.norm(theta[0] - optimum) / np.linalg.norm(optimum))


def test_error_feedback_reaches_the_optimum_and_plain_top_k_does_not():
    assert drift_to_optimum(True) < 0.01  # NumPy transcription of the same loop: 0.0027
    assert drift_to_optimum(False) > 0.3  # NumPy: 0.76


FORMAT_CASES = [("diloco", f) for f in sorted(FORMATS)] + [("diloco", "topk"), ("diloco", "randk"),
                                                           ("streaming_diloco", "fp4_e3m0")]


@pytest.mark.parametrize("scheme,fmt", FORMAT_CASES)
def test_ledger_equals_hlo_and_the_wire_is_narrow(nanochat, tiny_cfg, scheme, fmt):
    extra = ["outer.compress.value_bits=32"] if fmt == "randk" else []
    cfg = tiny_cfg(f"outer.name='{scheme}'", "outer.sync_every=4", f"outer.compress.format='{fmt}'",
                   "outer.compress.block=100", "outer.compress.error_feedback=True", *extra)  # 100 divides no shard
    report = inspect_scheme(cfg, nanochat)
    events = [e for e in report["inner"] + report["syncs"] if e["collectives"]]
    assert events
    for e in events:
        assert e["hlo"] == e["ledger"] > 0 and e["hlo_wire"] == pytest.approx(e["ledger_wire"]), e
        assert e["dtypes"] == (["f32"] if fmt == "randk" else ["u8"]), e  # codes, indices and scales as bytes


@pytest.mark.parametrize("islands", [2, 4, 8])
def test_int8_wire_stays_a_quarter_of_float32_at_any_island_count(nanochat, tiny_cfg, islands):
    cfg = tiny_cfg("outer.name='diloco'", f"parallel.replica={islands}", f"parallel.fsdp={8 // islands}",
                   "outer.compress.format='int8'")
    [sync] = inspect_scheme(cfg, nanochat)["syncs"]
    assert sync["hlo_wire"] == pytest.approx(sync["ledger_wire"])
    float32_wire = 2 * (islands - 1) / islands * 4 * inspect_scheme(cfg, nanochat)["params"]
    assert 0.25 <= sync["hlo_wire"] / float32_wire < 0.27  # 8 bits + a float32 scale per 128 values


@pytest.mark.parametrize("error_feedback", [False, True])
def test_top_k_sends_a_zero_as_zero(error_feedback):
    """2-bit top-k (k = 4 of each 64-entry chunk) on deltas that are zero but for one entry per island: chunks
    entirely zero and a chunk with fewer non-zeros than k. Its largest entry is exact on the grid, so the mean is
    exactly that entry's mean and zero elsewhere, and nothing is left behind in the error buffer."""
    mesh = make_mesh(4, 2)
    comp = Compressor(settings(format="topk", value_bits=2, error_feedback=error_feedback), fsdp=2, strategy="fsdp",
                      seed=0)
    x = np.zeros((4, 16, 64), np.float32)
    x[:, 0, 0] = [1.0, -2.0, 3.0, 6.0]

    def fn(d):
        mean, error = comp.mean(d, comp.init_error(d), None, jnp.int32(0))
        return mean, error if error_feedback else jnp.zeros_like(d)

    program, sharding = island_program(fn, mesh)
    with jax.set_mesh(mesh):
        mean, error = (np.asarray(a) for a in program(jax.device_put(x, sharding)))
    expected = np.zeros((16, 64), np.float32)
    expected[0, 0] = 2.0
    for r in range(4):
        np.testing.assert_array_equal(mean[r], expected)
    np.testing.assert_array_equal(error, 0.0)


def test_top_k_wire_grows_with_islands():
    comp = Compressor(settings(format="topk", chunk=64, k=64, value_bits=2), fsdp=1, strategy="fsdp", seed=0)
    tree = {"w": jax.ShapeDtypeStruct((256, 512), jnp.float32)}
    (p2, w2), (p8, w8) = comp.cost(tree, 2), comp.cost(tree, 8)
    assert p2 == p8 and w2 == p2 and w8 == 7 * p8  # an all-gather: each island receives (R - 1) x payload
    assert 4 * 256 * 512 / p2 > 100  # 2-bit values, 12-bit indices, a scale per 4,096-entry chunk


def test_lossless_settings_equal_the_uncompressed_scheme(nanochat, tiny_cfg, tmp_path):
    """format none, and top-k keeping every entry of a chunk in float32 (with error feedback), are DiLoCo."""
    from test_outer import config, drive
    base = ["outer.name='diloco'", "outer.sync_every=2", "max_steps=4"]
    plain, _ = drive(nanochat, config(tmp_path, tiny_cfg, *base, "run.name='plain'"), 4)
    lossless = [["outer.compress.format='none'"],
                ["outer.compress.format='topk'", "outer.compress.chunk=16", "outer.compress.k=256",
                 "outer.compress.value_bits=32", "outer.compress.error_feedback=True"]]
    for i, extra in enumerate(lossless):
        other, _ = drive(nanochat, config(tmp_path, tiny_cfg, *base, *extra, f"run.name='c{i}'"), 4)
        for a, b in zip(jax.tree.leaves(plain.outer.params), jax.tree.leaves(other.outer.params), strict=True):
            np.testing.assert_array_equal(a, b)
