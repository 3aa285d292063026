"""GGUF files made in the test session with llama.cpp's own writer (``gguf.GGUFWriter``),
and hostile variants of them."""

from __future__ import annotations

import struct
from pathlib import Path

import numpy as np

TOKENS = [f"tok{i}" for i in range(100)]


def q4_k_blocks(rng: np.random.Generator, n: int) -> np.ndarray:
    """``n`` Q4_K blocks of a valid layout (gguf's Python has no Q4_K quantizer): f16 d and
    dmin, 12 bytes of 6-bit scales and mins, 128 bytes of nibbles."""
    blocks = rng.integers(0, 256, (n, 144), dtype=np.uint8)
    blocks[:, 0:2] = np.full(n, 0.01, np.float16).view(np.uint8).reshape(n, 2)
    blocks[:, 2:4] = np.full(n, 0.02, np.float16).view(np.uint8).reshape(n, 2)
    return blocks


def write_gguf(path: Path) -> Path:
    """A small model: F32, F16, BF16, Q8_0, Q4_0 and Q4_K tensors, a tokenizer list."""
    import gguf
    from gguf import GGMLQuantizationType as Q
    from gguf import quants

    rng = np.random.default_rng(14)
    w = gguf.GGUFWriter(str(path), "llama")
    w.add_block_count(2)
    w.add_string("general.name", "tiny")
    w.add_token_list(TOKENS)
    w.add_array("tokenizer.ggml.scores", [float(i) for i in range(20)])
    w.add_array("small.list", [1, 2, 3])
    w.add_tensor("token_embd.weight", rng.standard_normal((4, 64)).astype(np.float32))
    w.add_tensor("blk.0.attn_norm.weight", rng.standard_normal(64).astype(np.float32))
    w.add_tensor("blk.0.ffn_up.weight", rng.standard_normal((3, 32)).astype(np.float16))
    bf = quants.quantize(rng.standard_normal((2, 32)).astype(np.float32), Q.BF16)
    w.add_tensor("blk.0.bf16.weight", bf, raw_shape=bf.shape, raw_dtype=Q.BF16)
    q8 = quants.quantize(rng.standard_normal((6, 64)).astype(np.float32), Q.Q8_0)
    w.add_tensor("blk.0.attn_q.weight", q8, raw_shape=q8.shape, raw_dtype=Q.Q8_0)
    q4 = quants.quantize(rng.standard_normal((5, 96)).astype(np.float32), Q.Q4_0)
    w.add_tensor("blk.1.attn_k.weight", q4, raw_shape=q4.shape, raw_dtype=Q.Q4_0)
    qk = q4_k_blocks(rng, 2 * 3 * 2).reshape(2, 3, 2 * 144)
    w.add_tensor("blk.1.ffn_down.weight", qk, raw_shape=qk.shape, raw_dtype=Q.Q4_K)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path


SPLIT_NAMES = [f"split-{k:05d}-of-00003.gguf" for k in (1, 2, 3)]


def write_gguf_split(folder: Path, split: bool = True) -> Path:
    """A model split in three files by gguf-py's own splitting writer
    (``GGUFWriter(split_max_tensors=2)``, what ``convert_hf_to_gguf.py --split-max-tensors``
    uses; the same ``split.*`` keys as llama.cpp's ``gguf-split``): F32 and F16 in the
    first split, Q8_0 and F32 in the second, Q4_K in the third; the model's metadata in the
    first only. With ``split=False``, the same model in one file, ``split.gguf``."""
    import gguf
    from gguf import GGMLQuantizationType as Q
    from gguf import quants

    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(41)
    w = gguf.GGUFWriter(folder / "split.gguf", "llama", split_max_tensors=2 if split else 0)
    w.add_block_count(1)
    w.add_string("general.name", "tiny-split")
    w.add_token_list(TOKENS)
    w.add_tensor("token_embd.weight", rng.standard_normal((4, 32)).astype(np.float32))
    w.add_tensor("blk.0.ffn_up.weight", rng.standard_normal((3, 32)).astype(np.float16))
    q8 = quants.quantize(rng.standard_normal((5, 64)).astype(np.float32), Q.Q8_0)
    w.add_tensor("blk.0.attn_q.weight", q8, raw_shape=q8.shape, raw_dtype=Q.Q8_0)
    w.add_tensor("blk.0.attn_norm.weight", rng.standard_normal(32).astype(np.float32))
    qk = q4_k_blocks(rng, 2 * 2).reshape(2, 2 * 144)
    w.add_tensor("output.weight", qk, raw_shape=qk.shape, raw_dtype=Q.Q4_K)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    if not split:
        return folder / "split.gguf"
    assert sorted(p.name for p in folder.iterdir()) == SPLIT_NAMES
    return folder


def _string(text: str) -> bytes:
    raw = text.encode()
    return struct.pack("<Q", len(raw)) + raw


def hostile(good: bytes) -> dict[str, bytes]:
    """Files a careless GGUF reader loops on, allocates for, or crashes on."""
    head = b"GGUF" + struct.pack("<I", 3)
    one_kv = head + struct.pack("<QQ", 0, 1) + _string("a")
    tensor = (head + struct.pack("<QQ", 1, 0) + _string("t") + struct.pack("<I", 2)
              + struct.pack("<QQ", 32, 2))
    return {
        "truncated": good[: len(good) // 2],
        "truncated header": good[:200],
        "absurd tensor count": good[:8] + struct.pack("<Q", 1 << 62) + good[16:],
        "absurd key/value count": good[:16] + struct.pack("<Q", 1 << 62) + good[24:],
        "tensor count past the header": good[:8] + struct.pack("<Q", 90) + good[16:],
        "string length past the end": good[:24] + struct.pack("<Q", 1 << 60) + good[32:],
        "array length past the end": one_kv + struct.pack("<IIQ", 9, 0, 10**12) + bytes(64),
        "arrays nested deeply": one_kv + struct.pack("<I", 9)
        + struct.pack("<IQ", 9, 1) * 20_000 + bytes(16),
        "unknown value type": one_kv + struct.pack("<I", 77) + bytes(16),
        "too many dimensions": head + struct.pack("<QQ", 1, 0) + _string("t")
        + struct.pack("<I", 9) + struct.pack("<Q", 1) * 9 + struct.pack("<IQ", 0, 0)
        + bytes(64),
        "unknown ggml type": tensor + struct.pack("<IQ", 999, 0) + bytes(64),
        "element count overflow": head + struct.pack("<QQ", 1, 0) + _string("t")
        + struct.pack("<I", 2) + struct.pack("<QQ", 1 << 40, 1 << 40)
        + struct.pack("<IQ", 0, 0) + bytes(64),
        "data past the end": tensor + struct.pack("<IQ", 0, 0) + bytes(32),
        "row not whole blocks": head + struct.pack("<QQ", 1, 0) + _string("t")
        + struct.pack("<I", 1) + struct.pack("<Q", 33) + struct.pack("<IQ", 8, 0)
        + bytes(128),
    }
