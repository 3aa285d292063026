"""``diff`` across formats that hold different things: a DCP folder (tensors and values:
``step``, optimizer ``param_groups``) against the safetensors file consolidated from it
(tensors only) is identical, the values a note; a real difference still exits 1, and a
value missing from a format that could hold it is still a difference."""

from __future__ import annotations

import json

import dcp_files
import pytest

from support import run_cli


@pytest.fixture(scope="module")
def files(torch, tmp_path_factory):
    from safetensors.torch import save_file

    root = tmp_path_factory.mktemp("diff-formats")
    dcp_files.save(torch, root / "ckpt", dcp_files.state_dict(torch))
    ref = dcp_files.consolidated(torch, root / "ckpt", root / "full.pt")
    tensors = {k: v.contiguous() for k, v in ref.items() if isinstance(v, torch.Tensor)}
    save_file(tensors, root / "full.safetensors")
    changed = dict(tensors)
    changed["model.0.bias"] = changed["model.0.bias"] + 1
    save_file(changed, root / "changed.safetensors")
    torch.save(tensors, root / "tensors.pt")  # a format that could hold the values
    values = sorted(k for k, v in ref.items() if not isinstance(v, torch.Tensor))
    return root, tensors, values


def test_dcp_against_its_consolidated_safetensors_is_identical(files):
    root, tensors, values = files
    assert "step" in values and any(k.startswith("optim.param_groups.") for k in values)
    for a, b in (("ckpt", "full.safetensors"), ("full.safetensors", "ckpt")):
        proc = run_cli("diff", str(root / a), str(root / b), "--json")
        assert proc.returncode == 0, proc.stdout + proc.stderr
        out = json.loads(proc.stdout)
        assert out["identical"] and out["counts"]["identical"] == len(tensors)
        assert sorted(e["key"] for e in out["not_compared"]) == values
        assert out["notes"] and "holds tensors only" in out["notes"][0]
    proc = run_cli("diff", str(root / "ckpt"), str(root / "full.safetensors"))
    assert proc.returncode == 0 and "IDENTICAL" in proc.stdout
    assert "note: " in proc.stdout and "step" in proc.stdout


def test_a_real_difference_still_exits_1(files):
    root, _tensors, _values = files
    proc = run_cli("diff", str(root / "ckpt"), str(root / "changed.safetensors"), "--json")
    assert proc.returncode == 1, proc.stderr
    out = json.loads(proc.stdout)
    assert [e["key"] for e in out["entries"] if e["status"] == "changed"] == ["model.0.bias"]


def test_values_missing_from_a_pickle_are_a_difference(files):
    root, _tensors, values = files
    proc = run_cli("diff", str(root / "ckpt"), str(root / "tensors.pt"), "--json")
    assert proc.returncode == 1, proc.stderr
    out = json.loads(proc.stdout)
    assert sorted(e["key"] for e in out["entries"] if e["status"] == "only_a") == values
    assert "not_compared" not in out and "notes" not in out
