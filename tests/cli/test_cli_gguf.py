"""``ckpt-inspector info/stats`` on GGUF files: ggml types, row-major shapes, dequantized
statistics; a truncated file or an absurd header exits 3 quickly with one line."""

from __future__ import annotations

import json
import time

import numpy as np
import pytest

from gguf_files import hostile, write_gguf
from support import run_cli

gguf = pytest.importorskip("gguf")


def test_info_and_stats_json(tmp_path):
    path = write_gguf(tmp_path / "tiny.gguf")
    proc = run_cli("info", "--json", str(path))
    assert proc.returncode == 0, proc.stderr
    info = json.loads(proc.stdout)
    assert info["format"] == "gguf" and info["verdict"] == "safe"
    tensors = {t["key"]: t for t in info["tensors"]}
    reader = {t.name: t for t in gguf.GGUFReader(str(path)).tensors}
    assert set(tensors) == set(reader)
    q4k = tensors["blk.1.ffn_down.weight"]
    assert (q4k["dtype"], q4k["shape"], q4k["numel"], q4k["nbytes"]) == \
        ("q4_k", [2, 3, 512], 3072, reader["blk.1.ffn_down.weight"].n_bytes)
    assert tensors["blk.0.attn_q.weight"]["dtype"] == "q8_0"
    assert tensors["token_embd.weight"]["dtype"] == "float32"
    assert info["metadata"]["general.architecture"] == "llama"

    proc = run_cli("stats", "--json", str(path), "blk.0.attn_q.weight")
    assert proc.returncode == 0, proc.stderr
    got = json.loads(proc.stdout)["tensors"]["blk.0.attn_q.weight"]
    t = reader["blk.0.attn_q.weight"]
    ref = gguf.quants.dequantize(np.asarray(t.data), t.tensor_type).astype(np.float64)
    assert got["kind"] == "quantized" and got["shape"] == [6, 64]
    assert got["mean"] == pytest.approx(ref.mean()) and got["max"] == ref.max()


@pytest.mark.parametrize("case", ["truncated", "absurd tensor count"])
def test_broken_gguf_exits_3_quickly(tmp_path, case):
    good = write_gguf(tmp_path / "tiny.gguf").read_bytes()
    path = tmp_path / "bad.gguf"
    path.write_bytes(hostile(good)[case])
    start = time.perf_counter()
    proc = run_cli("info", "--json", str(path))
    assert time.perf_counter() - start < 30
    assert proc.returncode == 3, proc.stderr
    assert "Traceback" not in proc.stderr and len(proc.stderr.strip().splitlines()) == 1


def test_export_says_which_tensors_were_dequantized(tmp_path):
    """GGUF's quantized types go out as float32: the result says so, in text and JSON."""
    path = write_gguf(tmp_path / "tiny.gguf")
    out = tmp_path / "tiny.safetensors"
    proc = run_cli("export", str(path), "--to", "safetensors", "-o", str(out), "--json")
    assert proc.returncode == 0, proc.stderr
    quantized = {t.tensor_type.name.lower() for t in gguf.GGUFReader(str(path)).tensors
                 if t.tensor_type.name.startswith("Q")}
    decoded = json.loads(proc.stdout)["dequantized"]
    assert decoded["to"] == "float32" and set(decoded["dtypes"]) == quantized
    assert decoded["tensors"] == sum(decoded["dtypes"].values())
    text = run_cli("export", str(path), "--to", "safetensors", "-o", str(out), "--overwrite")
    assert f"{decoded['tensors']} tensors dequantized to float32: " in text.stdout


def test_sizes_are_the_bytes_in_the_file_everywhere(tmp_path):
    """A quantized tensor's nbytes is what it takes in the file (not its float32 size): the
    records, the totals (by dtype too), the storage and the text summary agree."""
    path = write_gguf(tmp_path / "tiny.gguf")
    info = json.loads(run_cli("info", "--json", str(path)).stdout)
    reader = {t.name: int(t.n_bytes) for t in gguf.GGUFReader(str(path)).tensors}
    records = {t["key"]: t for t in info["tensors"]}
    assert {k: t["nbytes"] for k, t in records.items()} == reader
    assert all(t["storage"]["nbytes"] == t["nbytes"] for t in records.values())
    totals = info["totals"]
    assert totals["nbytes"] == totals["storage_nbytes"] == sum(reader.values())
    for dtype, row in totals["by_dtype"].items():
        assert row["nbytes"] == sum(t["nbytes"] for t in records.values() if t["dtype"] == dtype)
    from ckpt_inspector.core.summary import human_bytes

    text = run_cli("info", str(path)).stdout
    assert text.count(human_bytes(sum(reader.values()))) >= 2  # the summary and the tree's top
