"""LoRA adapters from the command line: ``info`` (its adapter section, ``info --json``'s
``adapter``) and ``stats --lora-update``."""

from __future__ import annotations

import json

import numpy as np
import pytest

from adapter_files import KOHYA_MODULES, PREFIX, expected_peft, kohya_file, peft_by_hand, update_of
from support import run_cli

Q = PREFIX + "model.layers.1.self_attn.q_proj"


def test_info_of_a_peft_adapter(torch, tmp_path):
    folder = tmp_path / "adapter"
    peft_by_hand(torch, folder)
    proc = run_cli("info", "--json", str(folder))
    assert proc.returncode == 0, proc.stderr
    doc = json.loads(proc.stdout)
    assert doc["format"] == "peft-adapter"
    assert doc["metadata"]["adapter_config"]["r"] == 4
    adapter = doc["adapter"]
    assert (adapter["kind"], adapter["naming"], adapter["base_model"]) == \
        ("peft", "peft", "toy/base-model")
    assert adapter["rank"] == {"min": 2, "max": 4, "counts": {"4": 7, "2": 1}}
    modules = {m["module"]: m for m in adapter["modules"]}
    assert {k: (m["rank"], m["alpha"], m["scale"]) for k, m in modules.items()} == \
        expected_peft()
    assert modules[PREFIX + "model.conv"]["update_shape"] == [6, 3, 3, 3]
    assert modules[PREFIX + "model.embed_tokens"]["update_shape"] == [50, 24]
    assert adapter["other_tensors"] == [PREFIX + "lm_head.weight"]
    text = run_cli("info", str(folder / "adapter_model.safetensors"))  # the file alone
    assert text.returncode == 0, text.stderr
    assert "adapter  PEFT LoRA adapter of toy/base-model · 8 modules" in text.stdout
    assert "layers.0–2.self_attn.v_proj ×3" in text.stdout
    plain = run_cli("info", "--json", str(tmp_path / "adapter" / "adapter_config.json"))
    assert json.loads(plain.stdout)["adapter"]["modules_count"] == 8


def test_stats_of_effective_updates(torch, tmp_path):
    folder = tmp_path / "adapter"
    arrays = peft_by_hand(torch, folder)
    proc = run_cli("stats", str(folder), Q + ".lora_B.weight", PREFIX + "model.embed_tokens",
                   "--lora-update", "--bins", "9", "--json")
    assert proc.returncode == 0, proc.stderr
    report = json.loads(proc.stdout)["tensors"]
    assert list(report) == [Q, PREFIX + "model.embed_tokens"]
    for name, entry in report.items():
        scale = expected_peft()[name][2]
        ref = update_of(arrays, name, scale)
        assert entry["shape"] == list(ref.shape) and entry["scale"] == scale
        assert entry["update_of"][0].endswith(("lora_A.weight", "lora_embedding_A"))
        assert entry["std"] == pytest.approx(ref.std(), rel=1e-5)
        assert entry["l2"] == pytest.approx(np.linalg.norm(ref), rel=1e-5)
        assert entry["min"] == pytest.approx(ref.min(), rel=1e-5)
        assert sum(entry["histogram"]["counts"]) == ref.size
    # every pair of a kohya file, as text
    arrays = kohya_file(torch, tmp_path / "k.safetensors")
    text = run_cli("stats", str(tmp_path / "k.safetensors"), "--lora-update")
    assert text.returncode == 0, text.stderr
    lines = text.stdout.splitlines()
    assert "effective update" in lines[0] and len(lines) == 2 + len(KOHYA_MODULES)
    assert "(r 4, alpha 1, scale 0.25)" in text.stdout  # the 3×3 conv: conv_alpha
    # what is not a pair, or no adapter at all: usage errors
    bad = run_cli("stats", str(folder), PREFIX + "lm_head.weight", "--lora-update")
    assert bad.returncode == 2 and "no adapted module" in bad.stderr
    torch.save({"w": torch.ones(2)}, tmp_path / "plain.pt")
    none = run_cli("stats", str(tmp_path / "plain.pt"), "--lora-update")
    assert none.returncode == 2 and "no LoRA pairs" in none.stderr
