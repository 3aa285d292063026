"""``ckpt-inspector info`` / ``scan`` / ``demo``: the JSON contract, exit codes, and no torch
import."""

from __future__ import annotations

import json
import subprocess
import sys
import zipfile

import pytest

from support import ROOT, run_cli

TENSOR_FIELDS = {"key", "path", "dtype", "shape", "numel", "nbytes", "device"}

FIXTURES = ["tensor_file", "tensors_file", "resnet_full", "resnet_params", "training_ckpt",
            "jit_trace", "onnx_file", "onnx_inline", "safetensors_file", "legacy_dict",
            "legacy_model", "dtypes_file", "views_file", "dataparallel_file", "lightning_file",
            "numpy_namespace_file", "quantized_file", "cuda_file", "bare_pickle", "pt2_file"]


def _path(request, fixture):
    value = request.getfixturevalue(fixture)
    return str(value[0] if isinstance(value, tuple) else value)


@pytest.mark.parametrize("fixture", FIXTURES)
def test_info_json_and_text_on_every_file_type(fixture, request):
    path = _path(request, fixture)
    proc = run_cli("info", path, "--json")
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout)
    assert out["format"] in ("torch-zip", "torch-legacy", "torchscript", "pickle",
                             "safetensors", "onnx", "pt2")
    assert out["verdict"] in ("safe", "needs-trust", "dangerous")
    assert isinstance(out["globals"], list)
    assert out["tensors"], "every fixture holds tensors"
    for t in out["tensors"]:
        assert set(t) >= TENSOR_FIELDS
        assert t["key"] == ".".join(str(p) for p in t["path"])
        assert not t["dtype"].startswith("torch.")
    text = run_cli("info", path)
    assert text.returncode == 0 and text.stdout.strip(), text.stderr


def test_info_json_values(training_ckpt, cuda_file, tensor_file):
    out = json.loads(run_cli("info", str(training_ckpt[0]), "--json").stdout)
    values = {v["key"]: v["value"] for v in out["values"]}
    assert values["epoch"] == 7
    keys = {t["key"] for t in out["tensors"]}
    assert "model_state_dict.0.weight" in keys
    assert "optimizer_state_dict.state.0.exp_avg" in keys
    cuda = json.loads(run_cli("info", str(cuda_file[0]), "--json").stdout)
    assert {t["device"] for t in cuda["tensors"]} == {"cuda:0"}
    single = json.loads(run_cli("info", str(tensor_file[0]), "--json").stdout)
    [t] = single["tensors"]
    assert t["key"] == "" and t["path"] == [] and t["shape"] == [3, 4]
    assert t["dtype"] == "float32" and t["nbytes"] == 48 and t["device"] == "cpu"


def test_info_matches_torch_load(training_ckpt, torch):
    out = json.loads(run_cli("info", str(training_ckpt[0]), "--json").stdout)
    loaded = torch.load(training_ckpt[0], weights_only=True)
    got = {t["key"]: (t["dtype"], t["shape"]) for t in out["tensors"]}
    for k, v in loaded["model_state_dict"].items():
        assert got[f"model_state_dict.{k}"] == (str(v.dtype)[6:], list(v.shape))


def test_scan_exit_codes(tensors_file, resnet_full, payload_files, marker):
    ok = run_cli("scan", str(tensors_file[0]), "--json")
    assert ok.returncode == 0 and json.loads(ok.stdout)["verdict"] == "safe"
    trust = run_cli("scan", str(resnet_full[0]), "--json")
    assert trust.returncode == 1 and json.loads(trust.stdout)["verdict"] == "needs-trust"
    for path in payload_files.values():
        bad = run_cli("scan", str(path), "--json")
        assert bad.returncode == 1, path
        report = json.loads(bad.stdout)
        assert report["verdict"] == "dangerous"
        assert report["findings"]
        assert run_cli("info", str(path)).returncode == 0
    assert not marker.exists()


def _one_clean_line(proc, path):
    assert proc.returncode == 3
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    assert str(path) in lines[0]
    assert "Traceback" not in proc.stderr


@pytest.mark.parametrize("content", [
    b"", b"hello world, not a checkpoint", b"PK\x03\x04garbage", b"\x80\x04\x95\x05",
    b"\x80\x02}q\x00(X\x01\x00\x00\x00aq\x01",
])
def test_unreadable_files_exit_3_with_one_line(tmp_path, content):
    path = tmp_path / "bad.pt"
    path.write_bytes(content)
    for command in ("info", "scan"):
        _one_clean_line(run_cli(command, str(path)), path)


def test_missing_file_and_folder(tmp_path):
    _one_clean_line(run_cli("info", str(tmp_path / "nope.pt")), tmp_path / "nope.pt")
    _one_clean_line(run_cli("info", str(tmp_path)), tmp_path)


def test_truncated_zip_exits_3(training_ckpt, tmp_path):
    data = training_ckpt[0].read_bytes()
    cut = tmp_path / "cut.pt"
    cut.write_bytes(data[: len(data) // 2])
    _one_clean_line(run_cli("info", str(cut)), cut)


def test_broken_stream_scan_still_gives_a_verdict(training_ckpt, tmp_path):
    broken = tmp_path / "cut_pickle.pt"
    with zipfile.ZipFile(training_ckpt[0]) as zin, zipfile.ZipFile(broken, "w") as zout:
        for item in zin.infolist():
            data = zin.read(item)
            zout.writestr(item, data[:100] if item.filename.endswith("data.pkl") else data)
    proc = run_cli("scan", str(broken), "--json")
    assert proc.returncode == 3
    assert json.loads(proc.stdout)["verdict"] == "dangerous"
    assert len(proc.stderr.strip().splitlines()) == 1


def test_damaged_storage_is_listed_and_said(tensors_file, tmp_path):
    damaged = tmp_path / "damaged.pt"
    with zipfile.ZipFile(tensors_file[0]) as zin, zipfile.ZipFile(damaged, "w") as zout:
        for item in zin.infolist():
            if not item.filename.endswith("/data/1"):
                zout.writestr(item, zin.read(item))
    proc = run_cli("info", str(damaged), "--json")
    assert proc.returncode == 0
    out = json.loads(proc.stdout)
    assert len(out["tensors"]) == 3
    assert sum("problem" in t for t in out["tensors"]) == 1
    assert "damaged" in proc.stderr


def test_usage_errors_exit_2():
    assert run_cli("info").returncode == 2
    assert run_cli("scan", "--bogus", "x").returncode == 2


@pytest.mark.parametrize("fixture", ["training_ckpt", "legacy_model", "safetensors_file",
                                     "bare_pickle"])
def test_info_and_scan_do_not_import_torch(fixture, request):
    path = _path(request, fixture)
    code = ("import sys; from ckpt_inspector.cli import main; import io, contextlib\n"
            "with contextlib.redirect_stdout(io.StringIO()):\n"
            f"    main(['info', {path!r}, '--json']); main(['scan', {path!r}])\n"
            "bad = [m for m in ('torch', 'numpy', 'PySide6') if m in sys.modules]\n"
            "assert not bad, bad\n")
    subprocess.run([sys.executable, "-c", code], check=True, cwd=ROOT, timeout=120)


def test_demo_checkpoint_is_made_locally(tmp_path):
    proc = run_cli("demo", env={"XDG_CACHE_HOME": str(tmp_path)})
    assert proc.returncode == 0, proc.stderr
    path = proc.stdout.strip().splitlines()[-1]
    assert path.startswith(str(tmp_path))
    out = json.loads(run_cli("info", path, "--json").stdout)
    values = {v["key"]: v["value"] for v in out["values"]}
    assert values["arch"] == "resnet18" and "epoch" in values
    assert any(t["key"].startswith("optimizer_state_dict.state.") for t in out["tensors"])
    assert out["verdict"] == "safe"
