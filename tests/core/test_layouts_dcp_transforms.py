"""DCP items saved through stream transforms: torch's ZStandard extension read (where a
zstd module is installed), any other transform refused entry by entry with the reason."""

from __future__ import annotations

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
