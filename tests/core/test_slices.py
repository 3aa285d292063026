"""Values, heatmaps and .npy export of tensor slices, against torch."""

from __future__ import annotations

import math
import os

import numpy as np
import pytest

from ckpt_inspector.core.errors import CheckpointError
from ckpt_inspector.core.ops.slices import TensorSlice, format_cell, heatmap, save_npy

from support import drive, tensor_infos


def expected_values(torch, t):
    """The values people expect to read: dequantized, complex kept, narrow floats widened."""
    if t.is_quantized:
        return t.dequantize().double().numpy()
    if t.is_complex():
        return t.to(torch.complex128).numpy()
    if t.dtype == torch.bool:
        return t.numpy()
    if t.dtype.is_floating_point:
        return t.double().numpy()
    return t.numpy()


def test_slices_read_every_dtype(torch, dtypes_file):
    path, data = dtypes_file
    got = tensor_infos(path)
    for key, t in data.items():
        if t.numel() == 0:
            continue
        sl = TensorSlice(got[key])
        want = expected_values(torch, t).reshape(sl.shape)
        for r in range(sl.shape[0]):
            for c in range(sl.shape[1]):
                v = sl.value(r, c)
                w = want[r, c]
                if isinstance(v, float) and np.isnan(w):
                    assert np.isnan(v), key
                else:
                    assert v == pytest.approx(w.item(), rel=1e-3 if "complex32" in key else 0), key


def test_slices_of_views_and_nd(torch, views_file):
    path, data = views_file
    got = tensor_infos(path)
    for key, t in data.items():
        t = t.detach()
        if t.dim() < 2 or t.numel() == 0:
            continue
        dims = t.dim()
        index = {d: t.shape[d] - 1 for d in range(dims)}
        for axes in ((0, 1), (1, 0), (dims - 1, 0)):
            sl = TensorSlice(got[key], axes, index)
            want = t.double()
            sel = [slice(None) if d in axes else index[d] for d in range(dims)]
            want = want[tuple(sel)]
            if axes[0] > axes[1]:
                want = want.T
            assert np.allclose(sl.block(0, sl.shape[0], 0, sl.shape[1]), want.numpy()), key


def test_per_channel_quantized_values(torch, quantized_file):
    path, data = quantized_file
    got = tensor_infos(path)
    for key, t in data.items():
        want = t.dequantize().double()
        if t.dim() == 2:
            for axes in ((0, 1), (1, 0)):
                sl = TensorSlice(got[key], axes)
                full = sl.block(0, sl.shape[0], 0, sl.shape[1])
                assert np.allclose(full, want.numpy() if axes == (0, 1) else want.numpy().T)
        grid_ok = t.dim() == 4
        if grid_ok:
            hm = drive(heatmap(got[key], kernels=True))
            for r in range(hm.image.shape[0]):
                for c in range(hm.image.shape[1]):
                    at = hm.kernel_at(r, c)
                    if at is not None:
                        assert hm.image[r, c] == pytest.approx(float(want[at]), abs=1e-6)


def test_bad_slice_requests(torch, tmp_path):
    path = tmp_path / "t.pt"
    torch.save({"t": torch.zeros(2, 3, 4)}, path)
    info = tensor_infos(path)["t"]
    with pytest.raises(ValueError):
        TensorSlice(info, (1, 1))
    with pytest.raises(IndexError):
        TensorSlice(info, (0, 1), {2: 4})


def test_heatmap_keeps_nan_visible_and_strips_downsample(torch, tmp_path):
    t = torch.arange(10_000, dtype=torch.float32)
    m = torch.ones(4, 6)
    m[1, 2] = float("nan")
    path = tmp_path / "h.pt"
    torch.save({"long": t, "m": m}, path)
    got = tensor_infos(path)
    strip = drive(heatmap(got["long"], max_side=1000))
    assert strip.factor == (1, 10) and strip.image.shape == (1, 1000)
    assert strip.image[0, 3] == pytest.approx(float(t[30:40].mean()))
    img = drive(heatmap(got["m"])).image
    assert np.isnan(img[1, 2]) and np.nansum(img) == 23


def test_save_npy_roundtrip(torch, dtypes_file, quantized_file, tmp_path):
    path, data = dtypes_file
    got = tensor_infos(path)
    for key, t in data.items():
        out = tmp_path / f"{key}.npy"
        result = drive(save_npy(got[key], str(out), str(path)))
        loaded = np.load(out)
        assert loaded.shape == tuple(t.shape) and result["bytes"] == os.path.getsize(out)
        want = expected_values(torch, t)
        if t.numel():
            assert np.allclose(loaded.astype(want.dtype), want, equal_nan=True, rtol=1e-3), key
    qpath, qdata = quantized_file
    qgot = tensor_infos(qpath)
    for key, t in qdata.items():
        out = tmp_path / f"q-{key}.npy"
        drive(save_npy(qgot[key], str(out)))
        assert np.allclose(np.load(out), t.dequantize().numpy(), atol=1e-6)


def test_save_npy_never_writes_the_source_and_is_atomic(torch, tmp_path):
    path = tmp_path / "src.pt"
    torch.save({"t": torch.ones(3)}, path)
    info = tensor_infos(path)["t"]
    before = path.read_bytes()
    with pytest.raises(CheckpointError):
        drive(save_npy(info, str(path), str(path), overwrite=True))
    assert path.read_bytes() == before
    target = tmp_path / "out.npy"
    target.write_bytes(b"old")
    with pytest.raises(CheckpointError):  # exists, no overwrite
        drive(save_npy(info, str(target), str(path)))
    gen = save_npy(info, str(target), str(path), overwrite=True)
    drive(gen)
    assert np.array_equal(np.load(target), np.ones(3, dtype=np.float32))
    assert [p.name for p in tmp_path.iterdir() if p.suffix == ".partial"] == []


def test_format_cell():
    assert format_cell(True) == "True" and format_cell(7) == "7"
    assert format_cell(0.1 + 0.2) == "0.3" and format_cell(float("nan")) == "nan"
    assert format_cell(complex(1, -2)) == "1-2j"


def test_downsampled_heatmap_can_keep_outliers(torch, tmp_path):
    t = torch.zeros(400, 30)
    t[123, 7] = -9.0
    path = tmp_path / "outlier.pt"
    torch.save({"t": t}, path)
    info = tensor_infos(path)["t"]
    mean = drive(heatmap(info, max_side=100))
    peak = drive(heatmap(info, max_side=100, reduce="absmax"))
    assert mean.factor == peak.factor == (4, 1) and peak.reduce == "absmax"
    assert mean.image[30, 7] == pytest.approx(-9.0 / 4)
    assert peak.image[30, 7] == 9.0 and peak.image.sum() == 9.0


@pytest.mark.parametrize("aspect", [0.5, 1.0, 3.0, 5.0])
def test_a_kernel_grid_takes_the_views_shape_and_its_ticks_tell_the_truth(torch, tmp_path,
                                                                         aspect):
    w = torch.randn(64, 3, 7, 7)
    path = tmp_path / "conv.pt"
    torch.save({"w": w}, path)
    hm = drive(heatmap(tensor_infos(path)["w"], kernels=True, aspect=aspect))
    h_px, w_px = hm.image.shape
    assert abs(math.log(w_px / h_px / aspect)) < math.log(1.5), (w_px, h_px)
    frame = hm.frame
    across = hm.layout[0]
    assert "output channel" in frame.left
    assert ("input channel" in frame.bottom) and "7×7" in frame.bottom
    left = [t for t in frame.left_ticks[0] if t[1]]
    bottom = [t for t in frame.bottom_ticks[0] if t[1]]
    assert left and bottom
    # the output channel under a row's label plus a column's offset is the kernel there
    for y, row_label in left:
        for x, col_label in bottom:
            at = hm.kernel_at(int(y), int(x))
            if across == 1:
                assert at[:2] == (int(row_label), int(col_label))
            elif at is not None:
                assert at[0] == int(row_label) + int(col_label.lstrip("+"))
                assert hm.image[int(y), int(x)] == pytest.approx(float(w[at]))
    # every tile row is marked (labelled or not)
    rows = math.ceil(64 / across)
    assert len(frame.left_ticks[0]) + len(frame.left_ticks[1]) == rows


def test_a_matrix_heatmap_names_its_axes_with_their_ranges(torch, tmp_path):
    path = tmp_path / "fc.pt"
    torch.save({"fc": torch.randn(1000, 512), "b": torch.randn(10)}, path)
    got = tensor_infos(path)
    hm = drive(heatmap(got["fc"]))
    assert hm.frame.left == "dim 0 (0–999)" and hm.frame.bottom == "dim 1 (0–511)"
    assert hm.frame.left_ticks is None and hm.frame.bottom_ticks is None  # the plot's own
    strip = drive(heatmap(got["b"]))
    assert strip.frame.bottom == "index (0–9)" and not strip.frame.left_values
