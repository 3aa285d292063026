"""A light install (``pip install ckpt-inspector``, no torch): the commands that read files
work, and every one that needs torch says which extra to install (exit 2, one line; one
JSON object with ``--json``) instead of a traceback.

torch is made impossible to import in the child processes by a folder first on PYTHONPATH
whose ``torch``, ``torchvision`` and ``onnxscript`` raise ModuleNotFoundError on import, as
they would where they are not installed."""

from __future__ import annotations

import json

import numpy as np
import pytest

from support import run_cli, torch_blocker

HINT = "pip install 'ckpt-inspector[torch]'"


@pytest.fixture(scope="module")
def no_torch(tmp_path_factory):
    """``(env, folder)``: an environment in which torch cannot be imported, and a folder
    with a state_dict saved by torch (made here, where torch is installed) and the same
    tensors as safetensors."""
    import torch
    from safetensors.numpy import save_file

    folder = tmp_path_factory.mktemp("light")
    blocker = torch_blocker(folder / "blocker")
    gen = torch.Generator().manual_seed(0)
    sd = {"fc.weight": torch.randn(4, 3, generator=gen), "fc.bias": torch.zeros(4)}
    torch.save(sd, folder / "sd.pt")
    save_file({k: v.numpy() for k, v in sd.items()}, str(folder / "sd.safetensors"))
    env = {"PYTHONPATH": str(blocker), "HOME": str(folder / "home"),
           "XDG_CONFIG_HOME": str(folder / "config"), "XDG_CACHE_HOME": str(folder / "cache")}
    return env, folder


@pytest.mark.parametrize("args", [
    ["info", "{d}/sd.pt"], ["info", "--json", "{d}/sd.safetensors"], ["scan", "{d}/sd.pt"],
    ["stats", "{d}/sd.pt", "fc.weight"], ["diff", "{d}/sd.pt", "{d}/sd.safetensors"],
    ["check", "{d}/sd.pt", "--against", "{d}/sd.safetensors"],
    ["export", "{d}/sd.pt", "--to", "safetensors", "-o", "{d}/out.safetensors"],
])
def test_what_reads_files_works_without_torch(no_torch, args):
    env, folder = no_torch
    out = run_cli(*[a.format(d=folder) for a in args], env=env)
    assert out.returncode == 0, out.stderr
    assert "Traceback" not in out.stderr and "torch" not in out.stderr


def test_the_exported_safetensors_holds_the_saved_values(no_torch):
    from safetensors.numpy import load_file

    env, folder = no_torch
    run_cli("export", str(folder / "sd.pt"), "--to", "safetensors", "-o",
            str(folder / "again.safetensors"), env=env)
    got = load_file(str(folder / "again.safetensors"))
    want = load_file(str(folder / "sd.safetensors"))
    assert got.keys() == want.keys() and all(np.array_equal(got[k], want[k]) for k in got)


@pytest.mark.parametrize("args", [
    ["load", "{d}/sd.pt"], ["devices"], ["demo"], ["arch", "{d}/sd.pt"],
    ["check", "{d}/sd.pt", "--arch", "resnet18"],
    ["export", "{d}/sd.safetensors", "--to", "state_dict", "-o", "{d}/out.pt"],
    ["export", "{d}/sd.pt", "--to", "torchscript", "-o", "{d}/out.ts"],
    ["export", "{d}/sd.pt", "--to", "onnx", "-o", "{d}/out.onnx"],
    ["stats", "{d}/sd.pt", "fc.weight", "--device", "cuda:0"],
])
def test_what_needs_torch_says_what_to_install(no_torch, args):
    env, folder = no_torch
    argv = [a.format(d=folder) for a in args]
    out = run_cli(*argv, env=env)
    assert out.returncode == 2, (out.returncode, out.stderr)
    [line] = out.stderr.strip().splitlines()[-1:]
    assert line.startswith("ckpt-inspector: ") and HINT in line, out.stderr
    assert "Traceback" not in out.stderr
    if argv[0] == "demo":  # no --json
        return
    answer = run_cli(*argv, "--json", env=env)
    doc = json.loads(answer.stdout)
    assert answer.returncode == 2 and doc["exit_code"] == 2 and HINT in doc["error"], answer


def test_onnx_export_without_torch_or_onnxscript_asks_for_torch(monkeypatch):
    """In a light install neither torch nor onnxscript is found: the dynamo exporter's
    check for onnxscript must not be what the user is told (the blocker above leaves both
    findable, so this asks the check itself)."""
    import importlib.util

    from ckpt_inspector.core.extras import missing
    from ckpt_inspector.core.ops.export import model

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name in (
        "torch", "onnxscript") else real(name, *a))
    with pytest.raises(ModuleNotFoundError) as err:
        model._check_options("onnx", "cpu", "float32", "trace", "dynamo", 1e-4, 1e-5)
    assert HINT in missing(err.value)
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == (
        "onnxscript") else real(name, *a))
    with pytest.raises(model.ExportUsageError, match="onnxscript"):
        model._check_options("onnx", "cpu", "float32", "trace", "dynamo", 1e-4, 1e-5)
