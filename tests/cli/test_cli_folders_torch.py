"""``load``, ``arch`` and the model exports (TorchScript, ONNX) on checkpoints made of many
files: a sharded Hugging Face model and a DCP folder of a torchvision resnet18. ``load``
assembles the state_dict from our readers (no file's code runs); ``arch`` finds the
architecture under the ``model.`` prefix DCP keys carry; the exports build the model from
the folder's weights."""

from __future__ import annotations

import json
import shutil

import dcp_files
import pytest

import shards
from support import run_cli


@pytest.fixture(scope="module")
def folders(torch, resnet18, tmp_path_factory):
    root = tmp_path_factory.mktemp("folders-torch")
    sd = {k: v.contiguous() for k, v in resnet18.state_dict().items()}
    shards.save_sharded(torch, root / "hf", sd, shards=3)
    dcp_files.save(torch, root / "dcp", {"model": dict(sd), "step": 3})
    return root, sd


def test_load_assembles_the_state_dict(torch, folders):
    from ckpt_inspector.core.ops.torch_load import trusted_load

    root, sd = folders
    for name, prefix in (("hf", ""), ("dcp", "model.")):
        proc = run_cli("load", str(root / name), "--json")
        assert proc.returncode == 0, proc.stderr
        out = json.loads(proc.stdout)
        assert out["tensors"] == len(sd) and "no code ran" in out["mode"]
        got = trusted_load(str(root / name)).obj
        for key, t in sd.items():
            assert got[prefix + key].dtype == t.dtype and torch.equal(got[prefix + key], t)
    assert trusted_load(str(root / "dcp")).obj["step"] == 3
    index = root / "hf" / "model.safetensors.index.json"
    if index.exists():  # the index file opens the same model
        assert run_cli("load", str(index)).returncode == 0


def test_load_of_a_folder_missing_a_shard_exits_3(folders, tmp_path):
    root, _sd = folders
    partial = tmp_path / "partial"
    shutil.copytree(root / "hf", partial)
    next(p for p in sorted(partial.iterdir()) if "-00002-of-" in p.name).unlink()
    proc = run_cli("load", str(partial))
    assert proc.returncode == 3, proc.stderr
    assert "cannot be read" in proc.stderr and len(proc.stderr.strip().splitlines()) == 1
    proc = run_cli("load", str(tmp_path / "nothing-here"))
    assert proc.returncode == 3 and len(proc.stderr.strip().splitlines()) == 1


def test_arch_of_folders(folders):
    root, _sd = folders
    for name, prefix in (("hf", ""), ("dcp", "model.")):
        proc = run_cli("arch", str(root / name), "--json")
        assert proc.returncode == 0, proc.stderr
        out = json.loads(proc.stdout)
        assert out["prefix"] == prefix
        assert out["candidates"][0]["name"] == "resnet18" and out["candidates"][0]["exact"]


def test_torchscript_export_of_a_dcp_folder(torch, folders, tmp_path):
    root, _sd = folders
    out = tmp_path / "m.pt"
    proc = run_cli("export", str(root / "dcp"), "--to", "torchscript", "--arch", "resnet18",
                   "-o", str(out))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "PASSED" in proc.stdout and "'model.'" in proc.stdout


def test_onnx_export_of_a_sharded_model(folders, tmp_path):
    pytest.importorskip("onnx")
    root, _sd = folders
    out = tmp_path / "m.onnx"
    proc = run_cli("export", str(root / "hf"), "--to", "onnx", "--arch", "resnet18",
                   "-o", str(out))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "PASSED" in proc.stdout
