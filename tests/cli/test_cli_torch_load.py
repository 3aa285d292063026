"""``scan`` and ``info`` say whether torch.load will work: checked against torch itself.

The CLI's answer (``scan --json``'s ``torch_load``) for each file is compared with what
``torch.load(path, map_location="cpu")`` does in one child process, and the fix the CLI
printed is run there before that load. Nothing loads with ``weights_only=False``.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import warnings

import pytest
import zero_files

from support import ROOT, Payload, run_cli

# every plain load first, then each fix (on the allowlist `import torch` left) and the load
CHILD = r"""
import json, sys, warnings
warnings.simplefilter("ignore")
import torch


def attempt(path):
    try:
        torch.load(path, map_location="cpu")
        return "ok"
    except Exception as err:
        return type(err).__name__


cases = json.loads(sys.stdin.read())
base = torch.serialization.get_safe_globals()
out = {case["path"]: {"plain": attempt(case["path"])} for case in cases}
for case in cases:
    if case.get("fix"):
        torch.serialization.clear_safe_globals()
        torch.serialization.add_safe_globals(base)
        exec(case["fix"], {})
        out[case["path"]]["fixed"] = attempt(case["path"])
print(json.dumps(out))
"""


def torch_load_results(cases: list[dict]) -> dict[str, dict[str, str]]:
    """``path -> {"plain": "ok" or the error's type, "fixed": ... after its fix}``."""
    proc = subprocess.run([sys.executable, "-c", CHILD], input=json.dumps(cases),
                          capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


def scan_json(path) -> dict:
    proc = run_cli("scan", "--json", str(path))
    assert proc.returncode in (0, 1), proc.stderr
    return json.loads(proc.stdout)["torch_load"]


@pytest.fixture()
def namespace_file(torch, tmp_path):
    path = tmp_path / "with_args.pt"
    torch.save({"w": torch.ones(2), "args": argparse.Namespace(lr=0.1)}, path)
    return path


def test_scan_json_says_what_torch_load_does(namespace_file, tensors_file, cuda_file,
                                             safetensors_file, torch, tmp_path, marker):
    dangerous = tmp_path / "evil.pt"
    torch.save({"w": torch.ones(2), "x": Payload(f"touch {marker}")}, dangerous)
    paths = [namespace_file, tensors_file[0], cuda_file[0], safetensors_file[0], dangerous]
    said = {str(p): scan_json(p) for p in paths}
    torch_did = torch_load_results([{"path": p, "fix": s["fix"]} for p, s in said.items()])
    for path, answer in said.items():
        assert answer["weights_only"] == (torch_did[path]["plain"] == "ok"), (path, torch_did)
    assert said[str(namespace_file)]["blocked_by"] == ["argparse.Namespace"]
    fixed = {p: r["fixed"] for p, r in torch_did.items() if "fixed" in r}
    assert fixed == {str(namespace_file): "ok"}  # the only file with a fix, and it works
    gpu = said[str(cuda_file[0])]
    assert gpu["weights_only"] and "cuda:0" in gpu["note"] and "map_location" in gpu["note"]
    evil = said[str(dangerous)]
    assert evil["dangerous"] and evil["fix"] is None and "posix.system" in evil["blocked_by"]
    assert said[str(safetensors_file[0])]["loader"].startswith("safetensors.torch.load_file")


def test_scan_text_says_it_in_two_lines(namespace_file):
    proc = run_cli("scan", str(namespace_file))
    lines = proc.stdout.splitlines()
    assert "  torch.load(path) fails: weights_only=True refuses argparse.Namespace; allowing " \
           "it fixes it" in lines
    assert any(line.startswith("  fix: torch.serialization.add_safe_globals("
                               "[argparse.Namespace])") for line in lines)


def test_info_json_carries_it_too(tensors_file):
    proc = run_cli("info", "--json", str(tensors_file[0]))
    doc = json.loads(proc.stdout)["torch_load"]
    assert doc["weights_only"] is True and doc["blocked_by"] == [] and doc["fix"] is None


def test_a_folder_is_said_file_by_file(torch, tmp_path):
    """A DeepSpeed ZeRO checkpoint: each of its torch.save files as torch.load reads it
    (they pickle DeepSpeed's own classes and the client state's argparse.Namespace)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        root = zero_files.save(torch, tmp_path / "ds", stage=2, world=2,
                               extra={"args": argparse.Namespace(lr=0.1)})
    folder = root / zero_files.TAG
    answer = scan_json(folder)
    files = answer["files"]
    assert len(files) >= 3 and not answer["weights_only"]
    torch_did = torch_load_results([{"path": os.path.join(folder, f["path"])} for f in files])
    for f in files:
        assert f["weights_only"] == (torch_did[os.path.join(folder, f["path"])]["plain"] == "ok"), f
    model = next(f for f in files if f["path"].startswith("mp_rank"))
    assert "argparse.Namespace" in model["blocked_by"]
    assert set(answer["blocked_by"]) == {n for f in files for n in f["blocked_by"]}
