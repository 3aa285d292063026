"""``ckpt-inspector check``: its JSON, its text, its exit codes (0 loads, 1 does not, 2 bad
input, 3 unreadable), a builder of the user's own on PYTHONPATH or by file, another
checkpoint as the model, and a hostile file whose code never runs."""

from __future__ import annotations

import json
import os
from collections import OrderedDict

import pytest

from support import Payload, run_cli


@pytest.fixture(scope="module")
def r18(torch, tmp_path_factory):
    import torchvision

    folder = tmp_path_factory.mktemp("check")
    model = torchvision.models.resnet18(weights=None)
    sd = model.state_dict()
    torch.save(sd, folder / "r18.pt")
    torch.save(torch.nn.DataParallel(model).state_dict(), folder / "dp.pt")
    head = torchvision.models.resnet18(weights=None, num_classes=10).state_dict()
    torch.save({"state_dict": head, "epoch": 7}, folder / "head.ckpt")
    return folder


def test_dataparallel_prefix_json(r18):
    proc = run_cli("check", str(r18 / "dp.pt"), "--arch", "resnet18", "--json")
    assert proc.returncode == 1, proc.stderr
    out = json.loads(proc.stdout)
    assert out["compatible"] is False and out["mismatched"] == []
    assert out["missing"][0] == "conv1.weight" and out["unexpected"][0] == "module.conv1.weight"
    # the file's _metadata is keyed module.bn1...: torch fills num_batches_tracked in
    assert not any(k.endswith("num_batches_tracked") for k in out["missing"])
    fix = out["fix"]
    assert fix["strip_prefix"] == "module." and fix["compatible"] and fix["strict"]
    assert 'sd = {k.removeprefix("module."): v for k, v in sd.items()}' in fix["code"]
    assert out["target"] == {"kind": "arch", "name": "resnet18", "tensors": 122,
                             "class": "ResNet"}
    assert {r["status"] for r in out["keys"]} == {"missing", "unexpected", "filled"}


def test_head_of_another_size_text_and_the_same_file_against_itself(r18):
    proc = run_cli("check", str(r18 / "head.ckpt"), "--arch", "resnet18")
    assert proc.returncode == 1, proc.stderr
    assert "checkpoint  " + str(r18 / "head.ckpt") + " [state_dict]" in proc.stdout
    assert "NOT COMPATIBLE" in proc.stdout
    assert "size mismatch (2):\n  fc.weight  checkpoint float32[10, 512], model " \
           "float32[1000, 512]\n" in proc.stdout
    assert "num_classes=10" in proc.stdout and "then it loads" in proc.stdout
    same = run_cli("check", str(r18 / "r18.pt"), "--against", str(r18 / "r18.pt"))
    assert same.returncode == 0, same.stderr
    assert "COMPATIBLE: model.load_state_dict(sd, strict=True) loads all 122 tensors" in \
        same.stdout


def test_against_another_checkpoint_json(r18):
    proc = run_cli("check", str(r18 / "head.ckpt"), "--against", str(r18 / "r18.pt"),
                   "--json")
    assert proc.returncode == 1, proc.stderr
    out = json.loads(proc.stdout)
    assert out["key"] == "state_dict" and out["exact"] is False
    assert out["mismatched"] == [{"key": "fc.weight", "checkpoint": [10, 512],
                                  "model": [1000, 512]},
                                 {"key": "fc.bias", "checkpoint": [10], "model": [1000]}]
    assert out["fix"]["compatible"] is False  # another file cannot be rebuilt for 10 classes
    assert any("10 outputs" in n for n in out["fix"]["notes"])


def test_builder_from_pythonpath_and_from_a_file(torch, tmp_path):
    (tmp_path / "mypkg").mkdir()
    (tmp_path / "mypkg" / "__init__.py").write_text("")
    (tmp_path / "mypkg" / "nets.py").write_text(
        "import torch\n"
        "def tiny():\n"
        "    return torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.ReLU(),\n"
        "                               torch.nn.Linear(8, 2))\n"
        "def broken():\n"
        "    raise ValueError('needs num_classes')\n")
    net = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.ReLU(), torch.nn.Linear(8, 2))
    sd = OrderedDict(("_orig_mod." + k, v) for k, v in net.state_dict().items())
    torch.save(sd, tmp_path / "compiled.pt")
    env = {"PYTHONPATH": os.pathsep.join([str(tmp_path), os.environ.get("PYTHONPATH", "")])}
    proc = run_cli("check", str(tmp_path / "compiled.pt"), "--builder", "mypkg.nets:tiny",
                   "--json", env=env)
    assert proc.returncode == 1, proc.stderr
    out = json.loads(proc.stdout)
    assert out["missing"] == ["0.weight", "0.bias", "2.weight", "2.bias"]
    assert out["fix"]["strip_prefix"] == "_orig_mod." and out["fix"]["compatible"]
    assert out["fix"]["code"].startswith("from mypkg.nets import tiny\n")
    assert "\nmodel = tiny()\nmodel.load_state_dict(sd)" in out["fix"]["code"]
    by_file = run_cli("check", str(tmp_path / "compiled.pt"), "--builder",
                      f"{tmp_path / 'mypkg' / 'nets.py'}:broken")
    assert by_file.returncode == 2
    assert by_file.stderr == ("ckpt-inspector: check: the builder "
                              f"{tmp_path / 'mypkg' / 'nets.py'}:broken failed: ValueError: "
                              "needs num_classes\n")


@pytest.mark.parametrize("args, line", [
    (["--arch", "resnet1800"], "check: torchvision has no model called 'resnet1800'"),
    (["--builder", "no_such_pkg.mod:fn"], "check: cannot import the builder's module "
                                          "no_such_pkg.mod: ModuleNotFoundError"),
    (["--arch", "resnet18", "--key", "model_state_dict"],
     "check: the checkpoint has no part called 'model_state_dict' (--key)"),
    ([], "check: give one of --arch NAME, --builder pkg.mod:fn or --against OTHER"),
])
def test_bad_input_exits_2_with_one_line(r18, args, line):
    proc = run_cli("check", str(r18 / "r18.pt"), *args)
    assert proc.returncode == 2, proc.stderr
    assert proc.stdout == ""
    assert proc.stderr.startswith(f"ckpt-inspector: {line}")
    assert proc.stderr.count("\n") == 1


def test_unreadable_other_exits_3_naming_it(r18, tmp_path):
    bad = tmp_path / "other.pt"
    bad.write_bytes(b"PK\x03\x04 not a zip")
    proc = run_cli("check", str(r18 / "r18.pt"), "--against", str(bad))
    assert proc.returncode == 3
    assert proc.stderr.startswith(f"ckpt-inspector: {bad}: ")


def test_nothing_in_the_checkpoint_runs(torch, tmp_path, marker):
    import torchvision

    sd = torchvision.models.resnet18(weights=None).state_dict()
    path = tmp_path / "evil.pt"
    torch.save({"state_dict": sd, "hook": Payload(f"touch {marker}")}, path)
    proc = run_cli("check", str(path), "--arch", "resnet18", "--json")
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["compatible"] is True
    assert not marker.exists()


def test_list_arch():
    proc = run_cli("check", "--list-arch", "--json")
    assert proc.returncode == 0, proc.stderr
    names = json.loads(proc.stdout)["architectures"]
    assert "resnet18" in names and "mobilenet_v3_small" in names
