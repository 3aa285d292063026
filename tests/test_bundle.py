"""The PyInstaller bundle (build.spec), run the way a user runs it.

Off unless asked for, because building it takes minutes and 4 GB:

    CKPT_INSPECTOR_BUNDLE_TEST=build     build dist/ckpt-inspector (PyInstaller in .venv), then test
    CKPT_INSPECTOR_BUNDLE_TEST=existing  test the bundle already in dist/ckpt-inspector
    python3 dev.py bundle --test         both steps in one (installs PyInstaller first)
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from support import ROOT, Payload, TinyNet, run_cli, run_exe, user_env

pytestmark = pytest.mark.slow

MODE = os.environ.get("CKPT_INSPECTOR_BUNDLE_TEST", "")
BUNDLE = ROOT / "dist" / "ckpt-inspector"
EXE = BUNDLE / ("ckpt-inspector.exe" if os.name == "nt" else "ckpt-inspector")
INTERNAL = BUNDLE / "_internal"

if MODE not in ("build", "1", "existing"):
    pytest.skip("builds a 4 GB bundle: set CKPT_INSPECTOR_BUNDLE_TEST=build (or =existing to "
                "test dist/ckpt-inspector), or run `python3 dev.py bundle --test`",
                allow_module_level=True)


@pytest.fixture(scope="module")
def exe() -> Path:
    if MODE in ("build", "1"):
        proc = subprocess.run([sys.executable, str(ROOT / "tools" / "build_bundle.py"), "--quiet"],
                              cwd=ROOT, capture_output=True, text=True, timeout=3600)
        assert proc.returncode == 0, proc.stdout + proc.stderr
        print(proc.stdout)
    assert EXE.is_file(), f"no bundle at {EXE}: run `python3 dev.py bundle`"
    return EXE


@pytest.fixture(scope="module")
def env(tmp_path_factory) -> dict[str, str]:
    """A user's environment: own config and cache folders (the demo checkpoint is made once
    in the cache), no display, nothing of .venv."""
    return user_env(tmp_path_factory.mktemp("home"))


@pytest.fixture
def sample(torch, tmp_path) -> Path:
    """A small training checkpoint as users save them."""
    model = TinyNet.make(torch)
    path = tmp_path / "sample.ckpt"
    torch.save({"epoch": 3, "model": model.state_dict(), "lr": 0.01}, path)
    return path


run = run_exe


def no_traceback(proc: subprocess.CompletedProcess) -> None:
    for bad in ("Traceback", "ModuleNotFoundError", "ImportError", "Failed to execute script"):
        assert bad not in proc.stderr, proc.stderr


def test_info_json_matches_the_command_line(exe, env, sample, torch):
    proc = run(exe, "info", "--json", str(sample), env=env)
    assert proc.returncode == 0, proc.stderr
    info = json.loads(proc.stdout)
    assert info["format"] == "torch-zip" and info["verdict"] == "safe"
    keys = {t["key"] for t in info["tensors"]}
    assert {f"model.{k}" for k in TinyNet.make(torch).state_dict()} <= keys
    reference = run_cli("info", "--json", str(sample))
    assert reference.returncode == 0, reference.stderr
    assert info == json.loads(reference.stdout)


def test_scan_verdicts_and_exit_codes(exe, env, sample, torch, tmp_path):
    proc = run(exe, "scan", "--json", str(sample), env=env)
    assert proc.returncode == 0 and json.loads(proc.stdout)["verdict"] == "safe"
    marker = tmp_path / "ran"
    bad = tmp_path / "bad.pt"
    torch.save({"x": Payload(f"touch {marker}")}, bad)
    proc = run(exe, "scan", "--json", str(bad), env=env)
    assert proc.returncode == 1 and json.loads(proc.stdout)["verdict"] == "dangerous"
    proc = run(exe, "info", str(tmp_path / "missing.pt"), env=env)
    assert proc.returncode == 3 and len(proc.stderr.strip().splitlines()) == 1
    assert not marker.exists()


def test_torch_works_inside_the_bundle(exe, env, sample):
    """What the app runs the executable for: devices, load, demo (torch and torchvision)."""
    proc = run(exe, "devices", "--json", env=env)
    assert proc.returncode == 0, proc.stderr
    assert "cpu" in [d["id"] for d in json.loads(proc.stdout)]
    proc = run(exe, "load", "--json", str(sample), env=env)
    assert proc.returncode == 0, proc.stderr
    loaded = json.loads(proc.stdout)
    reference = json.loads(run_cli("load", "--json", str(sample)).stdout)
    assert loaded["mode"] == "weights-only" and loaded["tensors"] == reference["tensors"] > 0
    proc = run(exe, "demo", env=env)
    assert proc.returncode == 0, proc.stderr
    demo = Path(proc.stdout.strip())
    assert demo.is_relative_to(env["XDG_CACHE_HOME"]) and demo.is_file()
    proc = run(exe, "arch", "--json", str(demo), env=env)
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["candidates"][0]["name"] == "resnet18"
    no_traceback(proc)


def test_exports_are_verified_inside_the_bundle(exe, env, tmp_path):
    """TorchScript, and ONNX with torch's dynamo exporter (onnxscript reads its own source)
    checked with onnxruntime."""
    demo = run(exe, "demo", env=env).stdout.strip()
    for target in ("torchscript", "onnx"):
        out = tmp_path / f"model.{target}"
        proc = run(exe, "export", demo, "--to", target, "--input-shape", "1,3,32,32",
                   "-o", str(out), "--json", env=env, timeout=600)
        assert proc.returncode == 0, proc.stderr
        result = json.loads(proc.stdout.strip().splitlines()[-1])
        assert result["status"] == "passed" and result["verified"], result
        assert out.is_file()
        no_traceback(proc)
        assert "triton" not in proc.stderr


def test_app_opens_a_file_offscreen(exe, env, sample):
    proc = run(exe, str(sample), env={**env, "CKPT_INSPECTOR_EXIT_WHEN_SHOWN": "1",
                                      "CKPT_INSPECTOR_QUIT_AFTER_MS": "60000"}, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith("shown ") and proc.stdout.split()[-1] == str(sample)
    no_traceback(proc)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc/PID/maps")
def test_app_runs_a_few_seconds_with_qt_plugins_and_plots_from_the_bundle(exe, env, sample):
    """The offscreen platform plugin and pyqtgraph (which the app imports on a worker once
    the window is up; pyqtgraph imports QtOpenGL) are loaded from the bundle."""
    proc = subprocess.Popen([str(exe), str(sample)], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True,
                            env={**env, "CKPT_INSPECTOR_QUIT_AFTER_MS": "6000"})
    wanted = {"platforms/libqoffscreen.so", "PySide6/QtOpenGL.abi3.so", "libQt6Widgets.so.6"}
    mapped: set[str] = set()
    deadline = time.monotonic() + 120
    while proc.poll() is None and time.monotonic() < deadline:
        try:
            maps = Path(f"/proc/{proc.pid}/maps").read_text()
        except OSError:
            break
        mapped |= {line.split()[-1] for line in maps.splitlines() if ".so" in line}
        time.sleep(0.1)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 0, err
    no_traceback(subprocess.CompletedProcess(proc.args, proc.returncode, out, err))
    found = {w: [m for m in mapped if m.endswith(w)] for w in wanted}
    assert all(found.values()), f"not loaded: {[w for w, f in found.items() if not f]}"
    for paths in found.values():
        assert all(p.startswith(str(BUNDLE)) for p in paths), paths


def test_bundle_has_what_the_app_needs_and_not_what_it_does_not(exe):
    resources = ROOT / "ckpt_inspector" / "resources"
    for f in resources.rglob("*") if resources.is_dir() else []:
        if f.is_file() and f.suffix != ".py" and "__pycache__" not in f.parts:
            rel = f.relative_to(ROOT)
            assert (INTERNAL / rel).is_file(), f"{rel} is not in the bundle"
    plugins = INTERNAL / "PySide6" / "Qt" / "plugins"
    for plugin in ("platforms/libqoffscreen.so", "platforms/libqxcb.so",
                   "platforms/libqwayland.so", "iconengines/libqsvgicon.so",
                   "imageformats/libqsvg.so"):
        assert (plugins / plugin).is_file() or not sys.platform.startswith("linux"), plugin
    assert any((INTERNAL / "torchvision").glob("_C*.so")) or os.name == "nt"
    assert list(INTERNAL.glob("onnxruntime/capi/*onnxruntime*"))
    for gone in ("triton", "tkinter", "_pytest", "torch/include", "PyInstaller"):
        assert not (INTERNAL / gone).exists(), gone
    assert not list(INTERNAL.rglob("*.h")) and not list(INTERNAL.rglob("*.a"))
