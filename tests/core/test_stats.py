"""Statistics, histograms and heatmaps against torch and numpy, on every dtype and on views."""

from __future__ import annotations

import math
import warnings

import numpy as np
import pytest

from ckpt_inspector.core import progress
from ckpt_inspector.core.ops.histogram import histogram
from ckpt_inspector.core.ops.slices import heatmap
from ckpt_inspector.core.ops.stats import compute

from support import drive, tensor_infos


def reference(torch, t):
    """float64 values as torch computes them: magnitude for complex, dequantized."""
    if t.is_quantized:
        return t.dequantize().double()
    if t.is_complex():  # the magnitude, computed in float64 (as the reader does)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return t.to(torch.complex128).abs()
    if t.dtype.is_floating_point and t.element_size() == 1:
        return t.float().double()
    return t.double()


def check(torch, stats, t, rel=1e-12):
    ref = reference(torch, t).reshape(-1)
    finite = ref[torch.isfinite(ref)]
    assert stats.numel == t.numel()
    assert stats.nan == int(torch.isnan(ref).sum())
    assert stats.posinf == int((ref == math.inf).sum())
    assert stats.neginf == int((ref == -math.inf).sum())
    assert stats.zeros == int((ref == 0).sum())
    if finite.numel():
        loose = max(rel, 1e-9)
        assert stats.min == pytest.approx(float(finite.min()), rel=rel, abs=1e-300)
        assert stats.max == pytest.approx(float(finite.max()), rel=rel, abs=1e-300)
        assert stats.mean == pytest.approx(float(finite.mean()), rel=loose, abs=1e-12)
        assert stats.std == pytest.approx(float(finite.std(unbiased=False)), rel=1e-6, abs=1e-9)
        assert stats.abs_mean == pytest.approx(float(finite.abs().mean()), rel=loose, abs=1e-12)
        # spread and norm come from deviations rounded to the data's precision
        assert stats.l2 == pytest.approx(float(finite.norm()), rel=1e-6, abs=1e-12)


def test_every_dtype_against_torch(torch, dtypes_file):
    path, data = dtypes_file
    got = tensor_infos(path)
    for key, t in data.items():
        stats = drive(compute(got[key]))
        if t.numel() == 0:
            assert stats.note == "empty tensor"
            continue
        check(torch, stats, t)
        if t.dtype == torch.bool:
            assert stats.true == int(t.sum())


def test_quantized_are_dequantized(torch, quantized_file):
    path, data = quantized_file
    got = tensor_infos(path)
    for key, t in data.items():
        stats = drive(compute(got[key]))
        assert stats.kind == "quantized"
        check(torch, stats, t, rel=1e-6)  # torch dequantizes in float32, the reader in float64


def test_views_with_strides_and_offsets(torch, views_file):
    path, data = views_file
    got = tensor_infos(path)
    for key, t in data.items():
        check(torch, drive(compute(got[key])), t.detach())


def test_nan_inf_zero_and_integer_counts(torch, tmp_path):
    x = torch.tensor([1.0, float("nan"), float("inf"), -float("inf"), 0.0, 0.0, -2.5])
    ints = torch.tensor([3, 3, 3, 7, 7, -1, 0], dtype=torch.int32)
    path = tmp_path / "special.pt"
    torch.save({"x": x, "ints": ints, "zero_d": torch.tensor(2.0)}, path)
    got = tensor_infos(path)
    s = drive(compute(got["x"]))
    assert (s.nan, s.posinf, s.neginf, s.zeros) == (1, 1, 1, 2)
    assert s.min == -2.5 and s.max == 1.0 and s.sparsity == pytest.approx(2 / 7)
    check(torch, s, x)
    i = drive(compute(got["ints"]))
    assert i.unique == 4 and i.top_values[0] == (3, 3) and dict(i.top_values)[7] == 2
    z = drive(compute(got["zero_d"]))
    assert z.numel == 1 and z.mean == 2.0


def test_chunked_accumulation_matches_one_pass(torch, tmp_path, monkeypatch):
    from ckpt_inspector.core.ops import passes as passes_mod

    monkeypatch.setattr(passes_mod, "CHUNK_ELEMENTS", 512)  # many chunks
    monkeypatch.setattr(passes_mod, "READ_BYTES", 4096)
    t = torch.randn(301, 157, dtype=torch.float64) * 1e3 + 5
    path = tmp_path / "chunks.pt"
    torch.save({"t": t, "tt": t.t()}, path)
    got = tensor_infos(path)
    check(torch, drive(compute(got["t"])), t)
    check(torch, drive(compute(got["tt"])), t.t())


def test_histogram_matches_numpy(torch, tmp_path):
    t = torch.randn(10_000)
    t[5] = float("nan")
    path = tmp_path / "h.pt"
    torch.save({"t": t}, path)
    info = tensor_infos(path)["t"]
    stats = drive(compute(info))
    h = drive(histogram(info, stats, bins=37))
    values = t.numpy()
    expected, edges = np.histogram(values[np.isfinite(values)], bins=37,
                                   range=(stats.min, stats.max))
    assert np.array_equal(h.counts, expected) and np.allclose(h.edges, edges)
    assert h.nan == 1 and h.sampled is None


def test_histogram_of_a_huge_tensor_is_a_stated_sample(torch, tmp_path, monkeypatch):
    from ckpt_inspector.core.ops import histogram as histogram_mod

    monkeypatch.setattr(histogram_mod, "HISTOGRAM_EXACT_LIMIT", 1000)
    monkeypatch.setattr(histogram_mod, "HISTOGRAM_SAMPLE", 100)
    t = torch.arange(5000, dtype=torch.float32)
    path = tmp_path / "big.pt"
    torch.save({"t": t}, path)
    info = tensor_infos(path)["t"]
    h = drive(histogram(info, drive(compute(info)), bins=10))
    assert h.sampled == 100 and h.counts.sum() == 100


def test_heatmaps(torch, resnet_params):
    path, sd = resnet_params
    got = tensor_infos(path)
    conv = got["conv1.weight"]
    grid = drive(heatmap(conv, kernels=True))
    across = grid.layout[0]  # tiles of 3 kernels (one per out channel), wrapped
    assert grid.grid == (64, 3) and 1 < across < 64
    assert grid.image.shape == (math.ceil(64 / across) * 8 - 1, across * 25 - 2)
    w = sd["conv1.weight"].numpy()
    assert np.allclose(grid.image[:7, :7], w[0, 0])
    assert np.allclose(grid.image[:7, 25 + 16:25 + 23], w[1, 2])  # second tile, third kernel
    assert np.allclose(grid.image[8:15, :7], w[across, 0])  # the second row of tiles
    assert np.isnan(grid.image[7, 0]) and np.isnan(grid.image[0, 7])  # gaps
    assert grid.kernel_at(8 + 3, 25 + 16 + 4) == (across + 1, 2, 3, 4)
    assert grid.kernel_at(7, 0) is None and grid.kernel_at(0, 23) is None
    for (r, c) in ((0, 0), (12, 30), (50, 60)):
        at = grid.kernel_at(r, c)
        if at is not None:
            assert grid.image[r, c] == pytest.approx(float(w[at]))
    plane = drive(heatmap(conv, axes=(2, 3), index={0: 5, 1: 1}))
    assert np.allclose(plane.image, sd["conv1.weight"][5, 1].numpy())
    swapped = drive(heatmap(conv, axes=(3, 2), index={0: 5, 1: 1}))
    assert np.allclose(swapped.image, sd["conv1.weight"][5, 1].numpy().T)
    strip = drive(heatmap(got["bn1.bias"]))
    assert strip.image.shape == (1, 64) and np.allclose(strip.image[0], sd["bn1.bias"].numpy())
    fc = drive(heatmap(got["fc.weight"], max_side=100))
    assert fc.factor == (10, 6) and fc.image.shape == (100, 86)
    w = sd["fc.weight"].double()
    assert fc.image[0, 0] == pytest.approx(float(w[:10, :6].mean()), rel=1e-5)
    assert fc.image[99, 85] == pytest.approx(float(w[990:, 510:].mean()), rel=1e-5)


def test_integers_are_summed_exactly(torch, tmp_path):
    from fractions import Fraction

    big = torch.tensor([2**62, 2**62 - 1, -(2**61), 3], dtype=torch.int64)
    u8 = torch.tensor([255, 0, 7, 7], dtype=torch.uint8)
    path = tmp_path / "ints.pt"
    torch.save({"big": big, "u8": u8, "flags": torch.tensor([True, False, True])}, path)
    got = tensor_infos(path)
    s = drive(compute(got["big"]))
    values = [int(v) for v in big]
    mean = Fraction(sum(values), len(values))
    var = sum((Fraction(v) - mean) ** 2 for v in values) / len(values)
    assert s.mean == float(mean) and s.std == pytest.approx(math.sqrt(var), rel=1e-15)
    assert s.unique is None  # a range too wide to count values
    u = drive(compute(got["u8"]))
    assert (u.min, u.max, u.unique, u.top_values[0]) == (0, 255, 3, (7, 2))
    assert drive(compute(got["flags"])).true == 2


def test_float32_extremes_do_not_overflow(torch, tmp_path):
    t = torch.tensor([3e38, 3e38, -3e38, 1.0], dtype=torch.float32)
    path = tmp_path / "huge.pt"
    torch.save({"t": t}, path)
    s = drive(compute(tensor_infos(path)["t"]))
    check(torch, s, t)
    assert s.nan == s.posinf == 0 and math.isfinite(s.std)


def test_torch_path_matches_numpy_path(torch, views_file):
    """The reductions used for a GPU device, run here on the CPU."""
    from ckpt_inspector.core.ops.stats import Stats, _compute_torch, _kind

    path, data = views_file
    got = tensor_infos(path)
    for key, t in data.items():
        info = got[key]
        if info.numel == 0:
            continue
        s = drive(_compute_torch(info, Stats(info.dtype, info.numel, _kind(info)), "cpu"))
        check(torch, s, t.detach())


def test_chunks_of_a_reused_buffer_are_read_in_order(torch, tmp_path, monkeypatch):
    from ckpt_inspector.core.ops import passes as passes_mod
    from ckpt_inspector.core.ops.passes import element_chunks

    monkeypatch.setattr(passes_mod, "READ_BYTES", 1000)  # not a multiple of the chunk
    t = torch.arange(10_000, dtype=torch.float16)
    path = tmp_path / "order.pt"
    torch.save({"t": t[123:]}, path)  # a view with a storage offset
    seen = [(index, values.copy()) for values, index in
            element_chunks(tensor_infos(path)["t"], chunk=96)]
    joined = np.concatenate([v for _, v in seen])
    assert [i for i, _ in seen] == list(np.cumsum([0] + [len(v) for _, v in seen[:-1]]))
    assert np.array_equal(joined, t[123:].float().numpy())


def test_integer_histograms_have_one_bin_per_value(torch, tmp_path):
    t = torch.tensor([0, 1, 1, 3, 3, 3], dtype=torch.int64)
    path = tmp_path / "ints.pt"
    torch.save({"t": t}, path)
    info = tensor_infos(path)["t"]
    h = drive(histogram(info, drive(compute(info)), bins=100))
    assert h.counts.tolist() == [1, 2, 0, 3] and h.edges.tolist() == [-0.5, 0.5, 1.5, 2.5, 3.5]


def test_threads_split_big_tensors_with_the_same_results(torch, tmp_path, monkeypatch):

    from ckpt_inspector.core.ops import histogram as histogram_mod
    from ckpt_inspector.core.ops import passes as passes_mod

    t = torch.randn(100_003, dtype=torch.float64) * 3 + 7
    t[17] = float("nan")
    t[99_000] = -float("inf")
    path = tmp_path / "split.pt"
    torch.save({"t": t}, path)
    info = tensor_infos(path)["t"]
    one = drive(compute(info))
    h1 = drive(histogram(info, one, bins=50))
    monkeypatch.setattr(passes_mod, "PARALLEL_MIN", 1000)
    monkeypatch.setattr(passes_mod, "_workers", lambda: 3)
    monkeypatch.setattr(histogram_mod, "HISTOGRAM_EXACT_LIMIT", 10_000)
    monkeypatch.setattr(histogram_mod, "HISTOGRAM_SAMPLE", 1000)
    assert len(passes_mod._parts(info, passes_mod.CHUNK_ELEMENTS)) == 2  # 64K-element parts
    monkeypatch.setattr(passes_mod, "CHUNK_ELEMENTS", 4096)
    assert len(passes_mod._parts(info, 4096)) == 3
    three = drive(compute(info))
    check(torch, three, t)
    assert (three.nan, three.neginf, three.min, three.max) == (one.nan, one.neginf, one.min,
                                                              one.max)
    assert three.std == pytest.approx(one.std, rel=1e-12)
    sampled = drive(histogram(info, three, bins=50))
    step = 100_003 // 1000
    finite = t[::step][torch.isfinite(t[::step])].numpy()
    assert sampled.sampled == len(t[::step]) and sampled.counts.sum() == len(finite)
    assert np.array_equal(sampled.counts, np.histogram(finite, bins=50,
                                                       range=(three.min, three.max))[0])
    assert h1.sampled is None
    token = progress.CancelToken()
    token.cancel()
    with pytest.raises(progress.Cancelled):
        drive(compute(info, cancel=token))


def test_one_stop_event_serves_stats_then_histogram_on_threads(torch, tmp_path, monkeypatch):
    """The app passes the same stop event to statistics and then the histogram; the
    threaded pass must not set it when it finishes (it once did, cancelling the histogram
    of every tensor over 8M elements)."""

    from ckpt_inspector.core.ops import passes as passes_mod
    from ckpt_inspector.core.ops.analysis import analyse
    from ckpt_inspector.core.progress import CancelToken

    t = torch.randn(50_000)
    path = tmp_path / "big.pt"
    torch.save({"t": t}, path)
    info = tensor_infos(path)["t"]
    monkeypatch.setattr(passes_mod, "PARALLEL_MIN", 1000)
    monkeypatch.setattr(passes_mod, "_workers", lambda: 2)
    monkeypatch.setattr(passes_mod, "CHUNK_ELEMENTS", 4096)
    token = CancelToken()
    stats, hist = drive(analyse(info, 20, token))
    assert not token.cancelled
    check(torch, stats, t)
    assert hist is not None and hist.counts.sum() == 50_000


def test_histogram_of_values_near_the_dtypes_limits(torch, tmp_path):
    """Was: a span wider than the dtype holds (float32 ±3e38, float64 ±1e308) gave numpy's
    "Too many bins for data range" and a traceback."""
    path = tmp_path / "limits.pt"
    torch.save({"f32": torch.tensor([3e38, -3e38, 0.0, 1.0], dtype=torch.float32),
                "f64": torch.tensor([1e308, -1e308, 2.0], dtype=torch.float64),
                "f16": torch.tensor([65504.0, -65504.0], dtype=torch.float16)}, path)
    infos = tensor_infos(path)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        for key, counts in (("f32", [1, 0, 2, 1]), ("f64", [1, 0, 1, 1]), ("f16", [1, 0, 0, 1])):
            stats = drive(compute(infos[key]))
            h = drive(histogram(infos[key], stats, bins=4))
            assert h.counts.tolist() == counts, key
            assert np.all(np.isfinite(h.edges)) and np.all(np.diff(h.edges) > 0), key
