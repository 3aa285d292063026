"""``info`` reports memory (``totals.memory`` in JSON, a ``memory`` line in text) and
``devices --json`` each device's free and total memory."""

from __future__ import annotations

import json

from support import run_cli


def _bytes(value) -> int:
    """Bytes of a saved object's distinct storages."""
    import torch

    if isinstance(value, torch.Tensor):
        return {value.untyped_storage().data_ptr(): value.untyped_storage().nbytes()}
    out = {}
    for v in (value.values() if isinstance(value, dict) else
              value if isinstance(value, (list, tuple)) else ()):
        out.update(_bytes(v))
    return out


def test_info_json_memory_of_a_training_checkpoint(training_ckpt):
    path, saved = training_ckpt
    proc = run_cli("info", str(path), "--json")
    assert proc.returncode == 0, proc.stderr
    mem = json.loads(proc.stdout)["totals"]["memory"]
    weights = sum(_bytes(saved["model_state_dict"]).values())
    optimizer = sum(_bytes(saved["optimizer_state_dict"]).values())
    assert mem["weights"]["saved"] == weights and mem["optimizer"]["saved"] == optimizer
    assert mem["saved"] == weights + optimizer and mem["other"] is None
    assert mem["float16"] == mem["bfloat16"] < mem["saved"]
    assert mem["optimizer_share"] == round(optimizer / (weights + optimizer), 4)


def test_info_text_has_a_memory_line(lightning_file):
    path, _saved = lightning_file
    proc = run_cli("info", str(path))
    assert proc.returncode == 0, proc.stderr
    [line] = [x for x in proc.stdout.splitlines() if x.startswith("  memory ")]
    assert "as saved" in line and "float16/bfloat16" in line and "optimizer state" in line


def test_devices_json_reports_memory():
    proc = run_cli("devices", "--json")
    assert proc.returncode == 0, proc.stderr
    devices = json.loads(proc.stdout)
    cpu = devices[0]
    assert cpu["id"] == "cpu" and "system memory" in cpu["free_is"]
    assert 0 < cpu["free_bytes"] <= cpu["total_bytes"]
    for d in devices[1:]:  # a GPU: torch.cuda.mem_get_info's figures (none on a CI box)
        if d["id"].startswith("cuda"):
            assert 0 <= d["free_bytes"] <= d["total_bytes"]
    text = run_cli("devices")
    assert text.returncode == 0 and "available)" in text.stdout.splitlines()[0]
