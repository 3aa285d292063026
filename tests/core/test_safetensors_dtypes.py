"""safetensors' newer dtypes (F4, F6_E2M3, F6_E3M2, F8_E8M0) and a conformance walk of the
dtype lists of the installed safetensors and torch, so that the next new one is caught."""

from __future__ import annotations

import json
import re
import struct
import warnings

import ml_dtypes
import numpy as np
import pytest

from ckpt_inspector.core import dtypes
from ckpt_inspector.core.errors import CheckpointError
from ckpt_inspector.core.formats import open_checkpoint
from ckpt_inspector.core.ops import stats
from ckpt_inspector.core.ops.slices import values_view
from ckpt_inspector.core.progress import run
from ckpt_inspector.core.tree import key_of

safetensors = pytest.importorskip("safetensors")


def _library_codes() -> list[str]:
    """Every dtype code the installed safetensors library knows: its header parser lists
    them when it meets an unknown one (serde's ``expected one of ...``)."""
    header = json.dumps({"x": {"dtype": "NOT_A_DTYPE", "shape": [1],
                               "data_offsets": [0, 1]}}).encode()
    with pytest.raises(Exception) as err:
        safetensors.deserialize(struct.pack("<Q", len(header)) + header + b"\0")
    codes = re.findall(r"`([A-Z0-9_]+)`", str(err.value).split("expected one of", 1)[-1])
    assert "F32" in codes and "BF16" in codes, str(err.value)
    return codes


def test_every_safetensors_code_is_known():
    codes = set(_library_codes())
    import safetensors.numpy as stn

    codes |= set(stn._TYPES)
    try:
        import safetensors.torch as stt
    except ImportError:
        pass
    else:
        codes |= set(stt._TYPES)
    unknown = codes - set(dtypes.SAFETENSORS_CODES)
    assert not unknown, f"safetensors dtypes ckpt-inspector does not read: {sorted(unknown)}"
    for code in codes:
        assert dtypes.get(dtypes.SAFETENSORS_CODES[code]) is not None, code


def test_every_torch_dtype_is_known(torch):
    names = {str(getattr(torch, n)).removeprefix("torch.") for n in dir(torch)
             if isinstance(getattr(torch, n), torch.dtype)}
    assert not names - set(dtypes.DTYPES), f"torch dtypes not in the table: {names}"


def _torch_dtypes(torch) -> list:
    return sorted({getattr(torch, n) for n in dir(torch)
                   if isinstance(getattr(torch, n), torch.dtype)}, key=str)


def test_what_safetensors_writes_from_torch_reads_back(torch, tmp_path):
    """Every torch dtype safetensors saves: its header code is ours, and shape, dtype and
    bytes read back as torch sees them (packed F4 by element, two a byte)."""
    from safetensors.torch import load_file, save_file

    seen = set()
    for dt in _torch_dtypes(torch):
        path = tmp_path / "t.safetensors"
        try:
            with warnings.catch_warnings():  # experimental dtypes say so
                warnings.simplefilter("ignore")
                t = torch.arange(8 * dt.itemsize, dtype=torch.uint8).view(2, -1).view(dt)
                save_file({"x": t}, str(path))
        except (ValueError, KeyError, TypeError, RuntimeError):
            continue  # a dtype torch cannot view as bytes, or safetensors does not store
        raw = path.read_bytes()
        (n,) = struct.unpack_from("<Q", raw)
        code = json.loads(raw[8:8 + n])["x"]["dtype"]
        seen.add(code)
        info = next(n.tensor for _p, n in open_checkpoint(path).tensors())
        assert info.problem is None, (dt, code)
        assert dtypes.SAFETENSORS_CODES[code] == info.dtype
        back = load_file(str(path))["x"]
        assert back.dtype == dt
        if info.dtype == "float4_e2m1fn":  # torch's float4_e2m1fn_x2 is a pair
            assert info.shape == (*back.shape[:-1], back.shape[-1] * 2)
        else:
            assert info.dtype == str(dt).removeprefix("torch.") and info.shape == back.shape
        assert info.nbytes == back.nbytes
        assert bytes(info.storage.source.raw.read() if info.dtype == "float4_e2m1fn"
                     else info.storage.source.read()) == back.view(torch.uint8).numpy().tobytes()
    assert {"F4", "F8_E8M0", "F32", "BF16"} <= seen


def _write(path, entries: dict[str, tuple[str, list[int], bytes]]) -> None:
    header, data = {}, b""
    for name, (code, shape, raw) in entries.items():
        header[name] = {"dtype": code, "shape": shape,
                        "data_offsets": [len(data), len(data) + len(raw)]}
        data += raw
    text = json.dumps(header).encode()
    path.write_bytes(struct.pack("<Q", len(text)) + text + data)


def _pack(codes: np.ndarray, bits: int) -> bytes:
    """Little-endian bit stream: element i in bits [bits*i, bits*(i+1))."""
    stream = 0
    for i, c in enumerate(codes.tolist()):
        stream |= c << (bits * i)
    return stream.to_bytes(len(codes) * bits // 8, "little")


@pytest.mark.parametrize(("code", "name", "bits"), [
    ("F4", "float4_e2m1fn", 4),
    ("F6_E2M3", "float6_e2m3fn", 6),
    ("F6_E3M2", "float6_e3m2fn", 6),
])
def test_sub_byte_floats_decode(tmp_path, code, name, bits):
    codes = (np.arange(48, dtype=np.uint8) * 7) % (1 << bits)
    path = tmp_path / "f.safetensors"
    _write(path, {"w": (code, [4, 12], _pack(codes, bits))})
    import safetensors

    with safetensors.safe_open(str(path), "numpy") as f:  # the library accepts the file
        assert list(f.keys()) == ["w"]
    info = next(n.tensor for _p, n in open_checkpoint(path).tensors())
    assert (info.dtype, info.shape, info.numel) == (name, (4, 12), 48)
    assert info.nbytes == 48 * bits // 8 == len(_pack(codes, bits))
    want = codes.view(getattr(ml_dtypes, name)).astype(np.float32).reshape(4, 12)
    assert np.array_equal(np.asarray(values_view(info), dtype=np.float32), want)
    got = run(stats.compute(info))
    assert got.kind == "float" and got.max == want.max() and got.min == want.min()
    assert got.mean == pytest.approx(float(want.astype(np.float64).mean()))


def test_f8_e8m0_matches_torch(torch, tmp_path):
    from safetensors.torch import save_file

    t = torch.tensor([2.0 ** k for k in range(-8, 8)]).to(torch.float8_e8m0fnu)
    path = tmp_path / "e8.safetensors"
    save_file({"s": t}, str(path))
    info = next(n.tensor for _p, n in open_checkpoint(path).tensors())
    assert info.dtype == "float8_e8m0fnu"
    assert np.array_equal(np.asarray(values_view(info), dtype=np.float32), t.float().numpy())


@pytest.mark.parametrize(("entry", "why"), [
    (("F4", [3], b"\0\0"), "byte boundary"),
    (("F6_E2M3", [6], b"\0" * 5), "byte boundary"),
    (("F4", [4], b"\0\0\0"), "bytes for 4 F4"),
])
def test_sub_byte_sizes_checked(tmp_path, entry, why):
    path = tmp_path / "bad.safetensors"
    _write(path, {"w": entry})
    with pytest.raises(CheckpointError, match=why):
        open_checkpoint(path)


def test_json_reports_stored_bytes(tmp_path):
    from ckpt_inspector.core.summary import tensor_record, totals

    path = tmp_path / "f4.safetensors"
    _write(path, {"w": ("F4", [2, 8], bytes(range(8)))})
    ckpt = open_checkpoint(path)
    (p, node), = ckpt.tensors()
    rec = tensor_record(p, node, {})
    assert (rec["dtype"], rec["shape"], rec["numel"], rec["nbytes"]) == \
        ("float4_e2m1fn", [2, 8], 16, 8)
    assert rec["storage"]["nbytes"] == 8 and totals(ckpt)["storage_nbytes"] == 8
    assert key_of(p) == "w"


# -- float4: safetensors' elements against torch's pairs ----------------------------------
@pytest.fixture
def f4_pair(torch, tmp_path):
    """The same float4 tensor as safetensors writes it from torch (F4 by element, the
    header's shape [4, 24]) and as torch.save keeps it (float4_e2m1fn_x2, [4, 12])."""
    from safetensors.torch import save_file

    t = (torch.arange(48, dtype=torch.uint8) * 37).view(4, 12).view(torch.float4_e2m1fn_x2)
    save_file({"w": t, "b": torch.ones(3)}, str(tmp_path / "f4.safetensors"))
    torch.save({"w": t, "b": torch.ones(3)}, tmp_path / "x2.pt")
    return tmp_path / "f4.safetensors", tmp_path / "x2.pt", t


def test_f4_shown_by_element_torch_files_by_pair(f4_pair):
    f4, x2, t = f4_pair
    infos = {key_of(p): n.tensor for p, n in open_checkpoint(f4).tensors()}
    assert (infos["w"].dtype, infos["w"].shape) == ("float4_e2m1fn", (4, 24))
    infos = {key_of(p): n.tensor for p, n in open_checkpoint(x2).tensors()}
    assert (infos["w"].dtype, infos["w"].shape) == ("float4_e2m1fn_x2", tuple(t.shape))


def test_f4_and_torch_pairs_compare_identical(f4_pair):
    from ckpt_inspector.core.ops.diff import IDENTICAL, diff

    f4, x2, _t = f4_pair
    result = run(diff(open_checkpoint(x2), open_checkpoint(f4)))
    assert result.identical, [(e.key, e.status, e.error) for e in result.entries]
    assert {e.key: e.status for e in result.entries} == {"w": IDENTICAL, "b": IDENTICAL}


def test_f4_exports_to_what_torch_loads(torch, f4_pair, tmp_path):
    """To a torch state_dict, an F4 tensor goes out as ``safetensors.torch.load_file``
    gives it: float4_e2m1fn_x2, the last dimension halved, the same bytes."""
    from safetensors.torch import load_file

    from ckpt_inspector.core.ops.export.plan import make_plan
    from ckpt_inspector.core.ops.export.writers import export_state_dict

    f4, _x2, t = f4_pair
    out = tmp_path / "out.pt"
    run(export_state_dict(make_plan(open_checkpoint(f4), ""), str(out)))
    got = torch.load(out, weights_only=True)
    want = load_file(str(f4))
    assert got["w"].dtype == want["w"].dtype == torch.float4_e2m1fn_x2
    assert got["w"].shape == want["w"].shape == t.shape
    assert torch.equal(got["w"].view(torch.uint8), t.view(torch.uint8))
    assert torch.equal(got["b"], want["b"])
    # a cast goes out as the values
    cast = tmp_path / "cast.pt"
    run(export_state_dict(make_plan(open_checkpoint(f4), "", cast="bfloat16"), str(cast)))
    values = torch.load(cast, weights_only=True)["w"]
    assert values.dtype == torch.bfloat16 and values.shape == (4, 24)
    want_values = t.view(torch.uint8).numpy().reshape(-1)
    codes = np.stack([want_values & 0xF, want_values >> 4], -1).reshape(4, 24)
    assert np.array_equal(values.float().numpy(),
                          codes.view(ml_dtypes.float4_e2m1fn).astype(np.float32))
