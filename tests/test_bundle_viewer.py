"""The light bundle (``python3 dev.py bundle --viewer``: build.spec without torch), run the
way a user runs it: it reads, scans, compares and exports to safetensors, shows a file in
the window, and what needs torch says what to install.

Off unless asked for (building takes minutes):

    CKPT_INSPECTOR_BUNDLE_TEST=existing  test the bundle already in dist/ckpt-inspector-viewer
    python3 dev.py bundle --viewer --test  build it, then this
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from support import ROOT, TinyNet, payload, run_cli, run_exe, user_env

pytestmark = pytest.mark.slow

BUNDLE = ROOT / "dist" / "ckpt-inspector-viewer"
EXE = BUNDLE / ("ckpt-inspector.exe" if os.name == "nt" else "ckpt-inspector")
INTERNAL = BUNDLE / "_internal"

if os.environ.get("CKPT_INSPECTOR_BUNDLE_TEST", "") != "existing":
    pytest.skip("tests dist/ckpt-inspector-viewer: run `python3 dev.py bundle --viewer "
                "--test`", allow_module_level=True)


@pytest.fixture(scope="module")
def exe() -> Path:
    assert EXE.is_file(), f"no bundle at {EXE}: run `python3 dev.py bundle --viewer`"
    return EXE


@pytest.fixture(scope="module")
def env(tmp_path_factory) -> dict[str, str]:
    """A user's environment: own config and cache folders, no display, nothing of .venv."""
    return user_env(tmp_path_factory.mktemp("home"))


@pytest.fixture
def sample(torch, tmp_path) -> Path:
    """A small training checkpoint saved by torch (here, where torch is installed)."""
    path = tmp_path / "sample.ckpt"
    torch.save({"epoch": 3, "model": TinyNet.make(torch).state_dict(), "lr": 0.01}, path)
    return path


run = run_exe


def test_no_torch_in_the_bundle(exe):
    for gone in ("torch", "torchvision", "onnxscript", "onnxruntime", "nvidia", "triton"):
        assert not (INTERNAL / gone).exists(), gone


def test_info_scan_and_a_safetensors_export(exe, env, sample, tmp_path, marker):
    got = json.loads(run(exe, "info", "--json", str(sample), env=env).stdout)
    want = json.loads(run_cli("info", "--json", str(sample)).stdout)
    assert got["totals"] == want["totals"] and got["verdict"] == "safe"
    evil = tmp_path / "evil.pkl"
    evil.write_bytes(payload(marker))
    scanned = run(exe, "scan", str(evil), env=env)
    assert scanned.returncode == 1 and "dangerous" in scanned.stdout and not marker.exists()
    out = tmp_path / "model.safetensors"
    proc = run(exe, "export", str(sample), "--key", "model", "--to", "safetensors", "-o",
               str(out), "--json", env=env)
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout.strip().splitlines()[-1])["verified"]


def test_what_needs_torch_says_what_to_install(exe, env, sample):
    for args in (["load", str(sample)], ["devices", "--json"], ["demo"]):
        proc = run(exe, *args, env=env)
        assert proc.returncode == 2, (args, proc.stderr)
        assert "pip install 'ckpt-inspector[torch]'" in proc.stderr, proc.stderr
        assert "Traceback" not in proc.stderr


def test_the_window_shows_a_file_offscreen(exe, env, sample):
    proc = run(exe, str(sample), env={**env, "CKPT_INSPECTOR_EXIT_WHEN_SHOWN": "1",
                                      "CKPT_INSPECTOR_QUIT_AFTER_MS": "60000"}, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith("shown ") and "Traceback" not in proc.stderr
