"""``ckpt-inspector info`` / ``scan``: the JSON contract, exit codes, and no torch import."""

from __future__ import annotations

import json
import os
import signal
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


def test_load_with_torch_onto_a_device(cuda_file, numpy_namespace_file):
    """A file saved on cuda:0 loads onto the cpu: the device picker's map_location."""
    proc = run_cli("load", str(cuda_file[0]), "--device", "cpu", "--json")
    assert proc.returncode == 0, proc.stderr
    result = json.loads(proc.stdout)
    assert result["devices"] == ["cpu"] and result["tensors"] == len(cuda_file[1])
    refused = run_cli("load", str(numpy_namespace_file[0]))
    assert refused.returncode == 1
    assert "run code" in refused.stderr and len(refused.stderr.strip().splitlines()) == 1


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


def test_stats_command(resnet_params, cuda_file, torch):
    path, sd = resnet_params
    proc = run_cli("stats", str(path), "conv1.weight", "bn1.num_batches_tracked",
                   "--bins", "8", "--json")
    assert proc.returncode == 0, proc.stderr
    report = json.loads(proc.stdout)["tensors"]
    conv = report["conv1.weight"]
    w = sd["conv1.weight"].double()
    assert conv["shape"] == [64, 3, 7, 7] and conv["std"] == pytest.approx(
        float(w.std(unbiased=False)), rel=1e-6)
    assert sum(conv["histogram"]["counts"]) == w.numel()
    assert report["bn1.num_batches_tracked"]["kind"] == "int"
    text = run_cli("stats", str(cuda_file[0]))
    assert text.returncode == 0 and "0.weight" in text.stdout and "nan/inf" in text.stdout
    progress = run_cli("stats", str(path), "fc.weight", "--progress").stdout.splitlines()
    assert json.loads(progress[0])["event"] == "progress"
    assert json.loads(progress[-1])["tensors"]["fc.weight"]["numel"] == 512_000
    assert run_cli("stats", str(path), "no.such.key").returncode == 2
    assert run_cli("stats", str(path), "--device", "nonsense:7").returncode == 2


# -- export: exit codes, interrupts, trust (regressions from the export review) ------------
EXPORT_BUILDERS = '''
import torch


def tiny():
    return torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3), torch.nn.BatchNorm2d(8),
                               torch.nn.ReLU(), torch.nn.Flatten(), torch.nn.Linear(8 * 6 * 6, 10))


class Flip(torch.nn.Module):
    """Its traced graph changes from one call to the next: torch.jit.trace's check fails."""

    def __init__(self):
        super().__init__()
        self.conv = torch.nn.Conv2d(3, 8, 3)
        self.calls = 0

    def forward(self, x):
        self.calls += 1
        y = self.conv(x)
        return y * 2 if self.calls % 2 else y.relu()


def flip():
    return Flip()
'''


@pytest.fixture(scope="module")
def export_models(torch, tmp_path_factory):
    """A folder for PYTHONPATH with ``export_builders_cli:tiny|flip`` and their weights, and a
    file holding the pickled tiny module itself."""
    import importlib.util

    folder = tmp_path_factory.mktemp("cli_builders")
    (folder / "export_builders_cli.py").write_text(EXPORT_BUILDERS)
    spec = importlib.util.spec_from_file_location("export_builders_cli",
                                                  folder / "export_builders_cli.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    paths = {"env": {"PYTHONPATH": str(folder)}}
    for name in ("tiny", "flip"):
        paths[name] = folder / f"{name}_sd.pt"
        torch.save(getattr(module, name)().state_dict(), paths[name])
    paths["tiny_module"] = folder / "tiny_module.pt"
    torch.save(module.tiny(), paths["tiny_module"])
    return paths


def _one_line(proc, code):
    assert proc.returncode == code, (proc.returncode, proc.stdout, proc.stderr)
    assert "Traceback" not in proc.stderr, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    return lines[0]


def test_export_usage_errors_exit_2_with_one_line(tensors_file, tmp_path):
    src = str(tensors_file[0])
    existing = tmp_path / "exists.pt"
    existing.write_bytes(b"keep")
    (tmp_path / "folder").mkdir()
    cases = [
        (["--include", "("], "invalid regular expression"),
        (["--key", "nope"], "no part of the file is called 'nope'"),
        (["--rename", ".*=same"], "would both become"),
        (["-o", str(existing)], "exists (overwrite it explicitly)"),
        (["-o", str(tmp_path / "missing" / "x.pt")], "does not exist"),
        (["-o", str(tmp_path / "folder"), "--overwrite"], "is a folder"),
        (["--device", "banana"], "not a device"),
    ]
    for extra, message in cases:
        args = ["export", src, "--to", "state_dict", "-o", str(tmp_path / "out.pt"), *extra]
        if "-o" in extra:
            args[4:6] = []
        assert message in _one_line(run_cli(*args), 2), extra
    assert existing.read_bytes() == b"keep"
    assert sorted(os.listdir(tmp_path)) == ["exists.pt", "folder"]


def test_model_export_errors_exit_with_one_line(export_models, tmp_path, torch):
    env = export_models["env"]
    tiny = ["export", str(export_models["tiny"]), "--to", "torchscript", "--builder",
            "export_builders_cli:tiny", "-o", str(tmp_path / "t.pt")]
    assert "does not run on a float16 input" in _one_line(
        run_cli(*tiny, "--input-shape", "1,3,8,8", "--input-dtype", "float16", env=env), 2)
    assert "does not run on a float32 input of shape [1, 3]" in _one_line(
        run_cli(*tiny, "--input-shape", "1,3", env=env), 2)
    bad_dtype = run_cli(*tiny, "--input-dtype", "banana", env=env)
    assert bad_dtype.returncode == 2 and "Traceback" not in bad_dtype.stderr
    if not torch.cuda.is_available():
        assert "not available" in _one_line(
            run_cli(*tiny, "--input-shape", "1,3,8,8", "--device", "cuda:0", env=env), 2)
    flip = run_cli("export", str(export_models["flip"]), "--to", "torchscript", "--builder",
                   "export_builders_cli:flip", "--input-shape", "1,3,8,8", "-o",
                   str(tmp_path / "f.pt"), env=env)
    assert "torch.jit.trace failed: TracingCheckError" in _one_line(flip, 1)
    assert os.listdir(tmp_path) == []


def test_export_records_a_gpu_device_and_checks_it_on_the_cpu(tensors_file, tmp_path):
    out = tmp_path / "on_gpu.pt"
    proc = run_cli("export", str(tensors_file[0]), "--to", "state_dict", "-o", str(out),
                   "--device", "cuda:0", "--json")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    result = json.loads(proc.stdout)
    assert result["torch_load"] and result["status"] == "passed"
    assert result["bytes"] == os.path.getsize(out)  # the file's size, not the tensors'
    out_json = json.loads(run_cli("info", str(out), "--json").stdout)
    assert {t["device"] for t in out_json["tensors"]} == {"cuda:0"}


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_interrupted_export_removes_its_partial_file(tensors_file, tmp_path, signum):
    """The export is held after writing its first tensor; the signal then must end it with one
    line, the interrupt's exit status and no temporary file left."""
    out = tmp_path / "out.pt"
    code = (
        "import sys, time\n"
        "from ckpt_inspector.core import export as ex\n"
        "real = ex.tensor_pieces\n"
        "def held(t, dtype):\n"
        "    yield from real(t, dtype)\n"
        "    print('WRITING', file=sys.stderr, flush=True)\n"
        "    time.sleep(120)\n"
        "ex.tensor_pieces = held\n"
        "from ckpt_inspector.cli import main\n"
        f"sys.exit(main(['export', {str(tensors_file[0])!r}, '--to', 'state_dict', '-o', "
        f"{str(out)!r}]))\n")
    proc = subprocess.Popen([sys.executable, "-c", code], cwd=ROOT, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    try:
        assert proc.stderr.readline().strip() == "WRITING"
        assert [f for f in os.listdir(tmp_path) if f.endswith(".partial")]
        proc.send_signal(signum)
        _out, err = proc.communicate(timeout=60)
    finally:
        proc.kill()
    assert proc.returncode == 128 + signum, err
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1, err
    assert "interrupted" in err and "nothing was written" in err
    assert os.listdir(tmp_path) == []


def test_onnx_export_without_onnxruntime_does_not_pass(export_models, tmp_path):
    hide = tmp_path / "hide"
    hide.mkdir()
    (hide / "sitecustomize.py").write_text("import sys\nsys.modules['onnxruntime'] = None\n")
    env = {"PYTHONPATH": f"{hide}{os.pathsep}{export_models['env']['PYTHONPATH']}"}
    out = tmp_path / "tiny.onnx"
    args = ["export", str(export_models["tiny"]), "--to", "onnx", "--exporter", "legacy",
            "--builder", "export_builders_cli:tiny", "--input-shape", "1,3,8,8", "-o", str(out)]
    text = run_cli(*args, env=env)
    assert text.returncode == 1, text.stdout + text.stderr
    assert "PASSED" not in text.stdout and "NOT DONE" in text.stdout
    assert "not installed: the model was not run" in text.stdout
    result = json.loads(run_cli(*args, "--overwrite", "--json", env=env).stdout)
    assert result["status"] == "not verified" and not result["passed"] and out.exists()


def test_export_builder_wins_over_the_pickled_model_without_trust(export_models, tmp_path):
    env = export_models["env"]
    path = str(export_models["tiny_module"])
    out = tmp_path / "built.pt"
    proc = run_cli("export", path, "--to", "torchscript", "-o", str(out), "--builder",
                   "export_builders_cli:tiny", "--input-shape", "1,3,8,8", "--json", env=env)
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["model"].startswith("export_builders_cli:tiny")
    refused = run_cli("export", path, "--to", "torchscript", "-o", str(tmp_path / "own.pt"),
                      "--model-source", "pickled", "--builder", "export_builders_cli:tiny",
                      env=env)
    assert "--trust" in _one_line(refused, 1)


def test_ctrl_c_in_any_command_exits_130_with_one_line(tensors_file, monkeypatch, capsys):
    from ckpt_inspector import cli

    def interrupted(_args):
        raise KeyboardInterrupt

    monkeypatch.setitem(cli.COMMANDS, "stats", interrupted)
    assert cli.main(["stats", str(tensors_file)]) == 130
    err = capsys.readouterr().err
    assert err == "ckpt-inspector stats: interrupted\n"
