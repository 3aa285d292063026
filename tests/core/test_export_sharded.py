"""``export --to hf-sharded``: a Hugging Face sharded model, split as huggingface_hub splits,
loaded back as transformers loads it (safetensors' ``load_file`` per shard + the index)."""

from __future__ import annotations

import json
import os
import socket

import dcp_files
import pytest

from ckpt_inspector.core import open_checkpoint
from ckpt_inspector.core.errors import ExportUsageError
from ckpt_inspector.core.ops.export import sharded
from ckpt_inspector.core.ops.export.plan import make_plan
from ckpt_inspector.core.ops.export.request import ExportRequest
from ckpt_inspector.core.tensors import to_torch

import shards
from support import drive, run_cli


@pytest.fixture(scope="module")
def hf_model(torch, tmp_path_factory):
    folder = tmp_path_factory.mktemp("hfsrc") / "model"
    sd = shards.state_dict(torch)
    sd["model.big"] = torch.randn(40, 10)  # 1600 bytes: larger than the small limits below
    shards.save_sharded(torch, folder, sd, shards=3)
    return folder, sd


def _load_like_transformers(folder):
    """What transformers does: the index's weight_map, then load_file on each shard."""
    from safetensors.torch import load_file

    index = folder / sharded.INDEX
    if not index.exists():
        return load_file(folder / "model.safetensors"), None
    weight_map = json.loads(index.read_text())["weight_map"]
    out = {}
    for shard in sorted(set(weight_map.values())):
        part = load_file(folder / shard)
        assert {k for k, v in weight_map.items() if v == shard} == set(part)
        out.update(part)
    return out, weight_map


def _same(torch, a, b):
    return a.dtype == b.dtype and a.shape == b.shape and torch.equal(
        a.contiguous().view(torch.uint8), b.contiguous().view(torch.uint8))


@pytest.mark.parametrize("limit", [300, 700, 1000, 5 * 10**9])
def test_split_matches_huggingface_hub_and_loads_back(torch, hf_model, tmp_path, limit):
    from huggingface_hub import split_torch_state_dict_into_shards

    folder, sd = hf_model
    plan = make_plan(open_checkpoint(folder), "", fmt="safetensors")
    # the same state_dict, in the plan's order, as torch tensors
    in_order = {k: to_torch(t) for k, t in plan.items}
    theirs = split_torch_state_dict_into_shards(in_order, max_shard_size=limit)
    out = tmp_path / "out"
    result = drive(sharded.export_sharded(plan, str(out), limit))
    assert result["passed"] and result["written"] and not result["problems"]
    assert sorted(os.listdir(out)) == sorted(result["files"])
    loaded, weight_map = _load_like_transformers(out)
    if theirs.is_sharded:
        assert weight_map == theirs.tensor_to_filename
        index = json.loads((out / sharded.INDEX).read_text())
        assert index["metadata"] == {"total_size": theirs.metadata["total_size"]}
        assert list(theirs.filename_to_tensors) == result["files"][:-1]
    else:
        assert result["files"] == ["model.safetensors"] == list(theirs.filename_to_tensors)
        assert open_checkpoint(out / "model.safetensors").metadata["__metadata__"] == {
            "format": "pt"}
    assert set(loaded) == set(sd)
    for k, v in sd.items():
        assert _same(torch, loaded[k], v), k
    again = open_checkpoint(out)
    assert again.format == "hf-sharded" and len(list(again.tensors())) == len(sd)


def test_a_tensor_larger_than_the_limit_gets_its_own_shard(torch, hf_model, tmp_path):
    folder, _sd = hf_model
    plan = make_plan(open_checkpoint(folder), "", fmt="safetensors")
    parts = sharded.split(plan, 300)
    assert all(len(p) == 1 for p in parts if sharded.size_of(plan, p[0][1]) > 300)
    assert sum(len(p) for p in parts) == len(plan.items)
    assert sharded.shard_names(3) == ["model-00001-of-00003.safetensors",
                                      "model-00002-of-00003.safetensors",
                                      "model-00003-of-00003.safetensors"]


def test_user_metadata_goes_to_the_index_or_the_single_file(hf_model, tmp_path):
    folder, _sd = hf_model
    plan = make_plan(open_checkpoint(folder), "", fmt="safetensors", metadata={"who": "me"})
    drive(sharded.export_sharded(plan, str(tmp_path / "a"), 1000))
    index = json.loads((tmp_path / "a" / sharded.INDEX).read_text())
    assert index["metadata"]["who"] == "me"
    drive(sharded.export_sharded(plan, str(tmp_path / "b")))
    meta = open_checkpoint(tmp_path / "b" / "model.safetensors").metadata["__metadata__"]
    assert meta == {"format": "pt", "who": "me"}


def test_parse_size_as_huggingface_hub():
    from huggingface_hub.serialization._base import parse_size_to_int

    for text in ("5GB", "500MB", "1.5GB", "10KB", "2TB", " 7 MB"):
        assert sharded.parse_size(text) == parse_size_to_int(text)
    assert sharded.parse_size("12345") == 12345
    for bad in ("", "5GiB", "-1", "0", "lots"):
        with pytest.raises(ExportUsageError):
            sharded.parse_size(bad)


def test_target_folder_rules(hf_model, tmp_path):
    folder, _sd = hf_model
    plan = make_plan(open_checkpoint(folder), "", fmt="safetensors")
    out = tmp_path / "out"
    drive(sharded.export_sharded(plan, str(out), 1000))
    first = sorted(os.listdir(out))
    with pytest.raises(ExportUsageError, match="not empty"):
        drive(sharded.export_sharded(plan, str(out), 1000))
    result = drive(sharded.export_sharded(plan, str(out), overwrite=True))  # one shard now
    assert result["written"] and os.listdir(out) == ["model.safetensors"] != first
    (out / "tokenizer.json").write_text("{}")
    with pytest.raises(ExportUsageError, match="other files"):
        drive(sharded.export_sharded(plan, str(out), overwrite=True))
    with pytest.raises(ExportUsageError, match="source"):  # the source's own folder
        drive(sharded.export_sharded(plan, str(folder), overwrite=True))
    (tmp_path / "file").write_text("x")
    with pytest.raises(ExportUsageError, match="not a folder"):
        drive(sharded.export_sharded(plan, str(tmp_path / "file"), overwrite=True))
    empty = tmp_path / "empty"
    empty.mkdir()
    assert drive(sharded.export_sharded(plan, str(empty)))["written"]
    assert [p for p in os.listdir(tmp_path) if p.endswith(".partial")] == []


def test_a_failed_check_writes_nothing(hf_model, tmp_path, monkeypatch):
    from ckpt_inspector.core.ops.export import verify

    folder, _sd = hf_model
    plan = make_plan(open_checkpoint(folder), "", fmt="safetensors")

    def failing(plan, opened):
        yield from ()
        return {"tensors": 0, "bit_exact": 0, "cast": 0, "max_abs_diff": 0.0,
                "problems": ["x: bytes differ from the source"]}

    monkeypatch.setattr(verify, "verify_tensors", failing)
    result = drive(sharded.export_sharded(plan, str(tmp_path / "out"), 1000))
    assert not result["passed"] and not result["written"]
    assert os.listdir(tmp_path) == []


def test_request_spells_the_target_and_the_size():
    from ckpt_inspector.cli import _parser

    request = ExportRequest("m", "hf-sharded", "out", max_shard_size=2 * 10**9)
    argv = request.to_argv()
    assert argv[argv.index("--max-shard-size") + 1] == "2000000000"
    args = _parser().parse_args(argv)
    assert ExportRequest.from_args(args) == request
    assert "--max-shard-size" not in ExportRequest("m", "hf-sharded", "out").to_argv()
    with pytest.raises(ExportUsageError, match="hf-sharded"):
        ExportRequest("m", "safetensors", "o", max_shard_size=5).check()


def test_dcp_two_ranks_to_hf_sharded_matches_torch_consolidation(torch, tmp_path):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    dcp_files.save_two_ranks(tmp_path / "ckpt", port)
    reference = dcp_files.consolidated(torch, tmp_path / "ckpt", tmp_path / "all.pt")
    proc = run_cli("export", str(tmp_path / "ckpt"), "--to", "hf-sharded", "-o",
                   str(tmp_path / "hf"), "--max-shard-size", "100", "--json")
    assert proc.returncode == 0, proc.stderr
    result = json.loads(proc.stdout)
    assert result["target"] == "hf-sharded" and result["status"] == "passed"
    assert result["files"][-1] == sharded.INDEX and len(result["files"]) > 2
    loaded, _map = _load_like_transformers(tmp_path / "hf")
    expected = {k: v for k, v in reference.items() if isinstance(v, torch.Tensor)}
    assert set(loaded) == set(expected)
    for k, v in expected.items():
        assert _same(torch, loaded[k], v), k
