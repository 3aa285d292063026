"""``diff`` across layouts with hf-sharded exports: a sharded model against a modified copy
lists the changed tensors; a DCP folder exported to safetensors and to hf-sharded diffs the
same against either, and the two exports are identical."""

from __future__ import annotations

import json

import dcp_files

import shards
from support import run_cli


def _diff(a, b):
    proc = run_cli("diff", str(a), str(b), "--json")
    assert proc.returncode in (0, 1), proc.stderr
    return json.loads(proc.stdout)


def test_sharded_model_against_a_modified_copy(torch, tmp_path):
    sd = shards.state_dict(torch)
    shards.save_sharded(torch, tmp_path / "a", sd, shards=3)
    sd["model.layers.2.mlp.weight"] = sd["model.layers.2.mlp.weight"] + 1
    sd["lm_head.weight"][0, 0] = 5
    shards.save_sharded(torch, tmp_path / "b", sd, shards=3)
    result = _diff(tmp_path / "a", tmp_path / "b")
    changed = {e["key"] for e in result["entries"] if e["status"] == "changed"}
    assert changed == {"model.layers.2.mlp.weight", "lm_head.weight"}
    assert result["counts"]["identical"] == len(sd) - 2


def test_dcp_exports_to_safetensors_and_hf_sharded_diff_alike(torch, tmp_path):
    folder = dcp_files.save(torch, tmp_path / "dcp", dcp_files.state_dict(torch))
    for to, out, extra in (("safetensors", tmp_path / "one.safetensors", []),
                           ("hf-sharded", tmp_path / "hf", ["--max-shard-size", "100"])):
        proc = run_cli("export", str(folder), "--to", to, "-o", str(out), "--key", "", *extra)
        assert proc.returncode == 0, proc.stderr
    one, hf = _diff(folder, tmp_path / "one.safetensors"), _diff(folder, tmp_path / "hf")
    tensors = {e["key"]: e["status"] for e in one["entries"] if "dtype_b" in e}
    assert tensors and set(tensors.values()) == {"identical"}
    assert {e["key"]: e["status"] for e in hf["entries"] if "dtype_b" in e} == tensors
    assert one["counts"] == hf["counts"]
    both = _diff(tmp_path / "one.safetensors", tmp_path / "hf")
    assert both["identical"] and both["counts"]["identical"] == len(tensors)


def test_shard_limit_is_worded_truthfully(torch, tmp_path):
    """Tensors larger than --max-shard-size get a shard of their own: the result says how
    many, rather than "shards of at most"."""
    sd = shards.state_dict(torch)
    shards.save_sharded(torch, tmp_path / "a", sd, shards=3)
    limit = 100
    big = sum(1 for t in sd.values() if t.numel() * t.element_size() > limit)
    assert big
    out = tmp_path / "out"
    proc = run_cli("export", str(tmp_path / "a"), "--to", "hf-sharded", "-o", str(out),
                   "--max-shard-size", str(limit))
    assert proc.returncode == 0, proc.stderr
    assert "at most" not in proc.stdout
    assert f"(limit {limit} B; {big} tensors larger than it in their own shard)" in proc.stdout
    again = run_cli("export", str(tmp_path / "a"), "--to", "hf-sharded", "-o", str(out),
                    "--max-shard-size", str(limit), "--overwrite", "--json")
    assert json.loads(again.stdout)["oversized"] == big
