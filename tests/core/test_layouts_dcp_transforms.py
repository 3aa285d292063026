"""DCP items saved through stream transforms: torch's ZStandard extension read (where a
zstd module is installed), any other transform refused entry by entry with the reason."""

from __future__ import annotations

import dataclasses
import os
import warnings

import dcp_files
import pytest

from ckpt_inspector.core import open_checkpoint
from ckpt_inspector.core.layouts import _dcp_transforms
from ckpt_inspector.core.tensors import to_torch
from ckpt_inspector.core.tree import key_of


def _save(torch, folder, sd, extension):
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint import FileSystemWriter

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        dcp.save(sd, storage_writer=FileSystemWriter(os.fspath(folder),
                                                     _extensions=[extension]), no_dist=True)
    return folder


def _tensors(ckpt):
    return {key_of(p): n.tensor for p, n in ckpt.tensors()}


def test_zstd_items_are_read_and_match_torch(torch, tmp_path):
    pytest.importorskip("zstandard")
    from torch.distributed.checkpoint._extension import ZStandard

    sd = dcp_files.state_dict(torch)
    folder = _save(torch, tmp_path / "z", sd, ZStandard())
    reference = dcp_files.consolidated(torch, folder, tmp_path / "all.pt")
    ckpt = open_checkpoint(folder)
    infos = _tensors(ckpt)
    expected = {k: v for k, v in reference.items() if isinstance(v, torch.Tensor)}
    assert set(infos) == set(expected)
    for key, ref in expected.items():
        assert infos[key].problem is None, (key, infos[key].problem)
        assert torch.equal(to_torch(infos[key]), ref), key
    assert type(infos["model.0.weight"].storage.source).__name__ == "Inflated"


def test_zstd_without_a_module_names_what_to_install(torch, tmp_path, monkeypatch):
    pytest.importorskip("zstandard")
    from torch.distributed.checkpoint._extension import ZStandard

    folder = _save(torch, tmp_path / "z", dcp_files.state_dict(torch), ZStandard())
    monkeypatch.setattr(_dcp_transforms, "_zstd_module", lambda: None)
    infos = _tensors(open_checkpoint(folder))
    assert infos and all("zstandard" in (t.problem or "") for t in infos.values())


def test_an_unknown_transform_is_a_problem_per_tensor(torch, tmp_path):
    from torch.distributed.checkpoint._extension import StreamTransformExtension

    class Identity(StreamTransformExtension):
        @staticmethod
        def registry_name():
            return "test.identity"

        @staticmethod
        def from_descriptor(version):
            return Identity()

        def get_descriptor(self):
            return "test.identity/1"

        def transform_to(self, output):
            return output

        def transform_from(self, input):
            return input

    folder = _save(torch, tmp_path / "t", dcp_files.state_dict(torch), Identity())
    ckpt = open_checkpoint(folder)
    infos = _tensors(ckpt)
    assert infos and all("'test.identity/1'" in (t.problem or "") and "does not know"
                         in t.problem for t in infos.values())


def test_inflating_is_bounded():
    pytest.importorskip("zstandard")
    import zstandard

    bomb = zstandard.ZstdCompressor().compress(b"\0" * (4 << 20))
    with pytest.raises(Exception, match="more than"):
        _dcp_transforms.inflate(bomb, ["stream.zstd/1"], 1 << 20)
    assert _dcp_transforms.inflate(bomb, ["stream.zstd/1"], 4 << 20) == b"\0" * (4 << 20)


def test_inflating_again_must_give_what_it_gave_when_opened():
    pytest.importorskip("zstandard")
    import zstandard

    packed = zstandard.ZstdCompressor().compress(b"\1" * 1000)
    assert bytes(_dcp_transforms.inflate(packed, ["stream.zstd/1"], 1000, 1000)) == \
        b"\1" * 1000
    with pytest.raises(Exception, match="changed"):
        _dcp_transforms.inflate(packed, ["stream.zstd/1"], 2000, 999)


# -- a .metadata that lies (made by torch, then edited as an attacker would) -------------
def _edit_metadata(folder, edit):
    import pickle

    path = os.path.join(folder, ".metadata")
    with open(path, "rb") as f:
        meta = pickle.load(f)  # our own file, just written by torch in this test
    edit(meta)
    with open(path, "wb") as f:
        pickle.dump(meta, f)


def _bomb_folder(torch, folder, claimed, inflated):
    """One tensor ``w`` saved zstd-compressed, its item replaced by a zstd stream of
    ``inflated`` zero bytes, ``.metadata`` claiming ``claimed`` float32 elements."""
    import zstandard
    from torch.distributed.checkpoint._extension import ZStandard

    _save(torch, folder, {"w": torch.zeros(4)}, ZStandard())
    comp = zstandard.ZstdCompressor(level=1).compressobj()
    zero = b"\0" * (1 << 20)
    bomb = b"".join(comp.compress(zero) for _ in range(inflated >> 20)) + comp.flush()
    (folder / "__0_0.distcp").write_bytes(bomb)

    def edit(meta):
        md = meta.state_dict_metadata["w"]
        md.size = torch.Size([claimed])
        md.chunks[0].sizes = torch.Size([claimed])
        for info in meta.storage_data.values():
            info.offset, info.length = 0, len(bomb)

    _edit_metadata(folder, edit)


@pytest.mark.parametrize(("claimed", "cap", "bound"), [
    (3 * 10**8, None, 4 << 20),     # its shape alone is past the cap: not inflated at all
    (6 << 20, 32 << 20, 48 << 20),  # 24 MiB claimed: stopped at the 32 MiB cap
    (4, None, 24 << 20)])           # 16 bytes claimed: stopped at 16 MiB and a little
def test_a_zstd_bomb_is_stopped_at_a_fixed_bound(torch, tmp_path, monkeypatch, claimed, cap,
                                                 bound):
    pytest.importorskip("zstandard")
    import tracemalloc

    folder = tmp_path / "bomb"
    _bomb_folder(torch, folder, claimed, 64 << 20)
    if cap is not None:
        monkeypatch.setattr(_dcp_transforms, "MAX_INFLATED", cap)
    tracemalloc.start()
    try:
        ckpt = open_checkpoint(folder)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    info = _tensors(ckpt)["w"]
    assert info.problem and "more than" in info.problem, info.problem
    assert info.storage is None
    assert peak < bound, f"peak {peak:,} bytes"


def test_overlapping_chunks_are_damaged(torch, tmp_path):
    """Two chunks at the same place, claimed to tile a tensor twice their size: their
    element count adds up, but they overlap and half the tensor is nowhere."""
    folder = _save_plain(torch, tmp_path / "o", {"w": torch.arange(4.0)})

    def edit(meta):
        import copy

        md = meta.state_dict_metadata["w"]
        md.size = torch.Size([8])
        md.chunks.append(copy.deepcopy(md.chunks[0]))

    _edit_metadata(folder, edit)
    info = _tensors(open_checkpoint(folder))["w"]
    assert info.problem and "overlap" in info.problem, info.problem
    assert info.storage is None


def test_a_chunk_with_too_few_sizes_is_damaged(torch, tmp_path):
    folder = _save_plain(torch, tmp_path / "s", {"w": torch.arange(4.0)})

    def edit(meta):
        md = meta.state_dict_metadata["w"]
        md.size = torch.Size([4, 1])  # the chunk keeps offsets [0] and sizes [4]
        md.chunks[0].offsets = torch.Size([0, 0])
        for index in list(meta.storage_data):
            info = meta.storage_data.pop(index)
            meta.storage_data[dataclasses.replace(index, offset=torch.Size([0, 0]))] = info

    _edit_metadata(folder, edit)
    info = _tensors(open_checkpoint(folder))["w"]
    assert info.problem and "2 offsets and 1 sizes" in info.problem, info.problem
    assert info.storage is None


def _save_plain(torch, folder, sd):
    return dcp_files.save(torch, folder, sd)
