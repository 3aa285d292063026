"""``info`` on one shard of a sharded model says (on stderr, in text mode) where the rest is."""

from __future__ import annotations

import json

from shards import save_sharded, state_dict
from support import run_cli


def test_info_on_one_shard_names_the_whole_model(torch, tmp_path):
    folder = tmp_path / "model"
    weight_map = save_sharded(torch, folder, state_dict(torch), "safetensors", shards=3)
    shard = folder / sorted(set(weight_map.values()))[2]
    proc = run_cli("info", str(shard))
    assert proc.returncode == 0, proc.stderr
    assert f"is shard 3 of 3 of a sharded model; 'ckpt-inspector info {folder}'" in proc.stderr
    proc = run_cli("info", "--json", str(shard))
    assert proc.returncode == 0 and proc.stderr == ""
    assert json.loads(proc.stdout)["format"] == "safetensors"
    proc = run_cli("info", str(folder))
    assert proc.returncode == 0 and "note:" not in proc.stderr
