"""``ckpt-inspector export``: exit codes, interrupts, trust (regressions from the export
review)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys

import pytest

from support import ROOT, run_cli

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
    no_arch = run_cli("export", str(export_models["tiny"]), "--to", "torchscript", "--arch",
                      "resnet1800", "-o", str(tmp_path / "n.pt"))  # a usage error, as in check
    assert "torchvision has no model called 'resnet1800'" in _one_line(no_arch, 2)
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
        "from ckpt_inspector.core.ops.export import pieces, verify, writers\n"
        "real = pieces.tensor_pieces\n"
        "def held(t, dtype):\n"
        "    yield from real(t, dtype)\n"
        "    print('WRITING', file=sys.stderr, flush=True)\n"
        "    time.sleep(120)\n"
        "writers.tensor_pieces = verify.tensor_pieces = held\n"
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


def test_a_name_of_another_format_is_written_with_a_warning(tensors_file, tmp_path):
    """``--to safetensors -o x.pt`` writes what was asked, and says on stderr that the name
    says otherwise; a name that fits gets no word."""
    out = tmp_path / "x.pt"
    proc = run_cli("export", str(tensors_file[0]), "--to", "safetensors", "-o", str(out),
                   "--json")
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["status"] == "passed"
    [line] = proc.stderr.strip().splitlines()
    assert line.startswith("ckpt-inspector: warning: x.pt: a safetensors file named .pt"), line
    assert json.loads(run_cli("info", str(out), "--json").stdout)["format"] == "safetensors"
    fits = run_cli("export", str(tensors_file[0]), "--to", "safetensors", "-o",
                   str(tmp_path / "x.safetensors"))
    assert fits.returncode == 0 and fits.stderr == "", fits.stderr
