"""The commands on a torch.distributed.checkpoint folder: ``info``, ``scan``, ``stats``,
``diff`` and ``export`` read it as one checkpoint, checked against torch's consolidation."""

from __future__ import annotations

import json
import socket

import dcp_files
import pytest

from support import run_cli


@pytest.fixture(scope="module")
def folders(torch, tmp_path_factory):
    from safetensors.torch import save_file

    root = tmp_path_factory.mktemp("dcp-cli")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    dcp_files.save_two_ranks(root / "ranks", port)
    ref = dcp_files.consolidated(torch, root / "ranks", root / "ranks.pt")
    tensors = {k: v.contiguous() for k, v in ref.items() if isinstance(v, torch.Tensor)}
    save_file(tensors, root / "ranks.safetensors")
    dcp_files.save(torch, root / "model", dict(tensors))  # tensors only
    return root, ref, tensors


def test_dcp_folder_in_every_command(folders, tmp_path):
    root, _ref, tensors = folders
    ranks = str(root / "ranks")
    proc = run_cli("info", ranks, "--json")
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout)
    assert out["format"] == "dcp" and out["verdict"] == "safe"
    got = {t["key"]: t for t in out["tensors"]}
    assert set(got) == set(tensors)
    for key, t in tensors.items():
        assert got[key]["shape"] == list(t.shape)
        assert f"torch.{got[key]['dtype']}" == str(t.dtype)
    assert [p["file"] for p in got["model.w"]["pieces"]] == ["__0_0.distcp", "__1_0.distcp"]
    assert {f["path"] for f in out["files"]} == {".metadata", "__0_0.distcp", "__1_0.distcp"}
    assert run_cli("scan", ranks).returncode == 0
    assert run_cli("stats", ranks, "--json").returncode == 0

    # tensors identical to torch's consolidation; the non-tensor `step`, which safetensors
    # cannot hold, is a note, not a difference
    proc = run_cli("diff", ranks, str(root / "ranks.safetensors"), "--json")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    diff = json.loads(proc.stdout)
    assert diff["identical"] and diff["counts"]["identical"] == len(tensors)
    assert [e["key"] for e in diff["not_compared"]] == ["step"]
    proc = run_cli("diff", str(root / "model"), str(root / "ranks.safetensors"))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "IDENTICAL" in proc.stdout

    out_file = tmp_path / "out.safetensors"
    proc = run_cli("export", ranks, "--to", "safetensors", "-o", str(out_file))
    assert proc.returncode == 0, proc.stderr
    proc = run_cli("diff", str(out_file), str(root / "ranks.safetensors"))
    assert proc.returncode == 0, proc.stdout
