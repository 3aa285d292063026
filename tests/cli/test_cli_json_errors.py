"""With ``--json`` every exit prints exactly one JSON object on stdout: the result, or, where
the command failed, an object with ``error`` (the line stderr also gets) and ``exit_code``,
so that scripts never parse stderr."""

from __future__ import annotations

import json
import os
import zipfile

import pytest

from support import run_cli


def _main(capsys, *argv: str) -> tuple[int, str, str]:
    from ckpt_inspector import cli

    try:
        code = cli.main(list(argv))
    except SystemExit as stop:  # argparse's own errors
        code = stop.code
    out, err = capsys.readouterr()
    return code, out, err


def _one_object(out: str) -> dict:
    value = json.loads(out)  # exactly one JSON value: anything after it fails here
    assert isinstance(value, dict), out
    return value


def _failed(capsys, code: int, *argv: str) -> dict:
    """Run ``argv`` in process: it must exit ``code`` with one JSON object on stdout that
    says why, in the words of its one line on stderr."""
    status, out, err = _main(capsys, *argv)
    assert status == code, (argv, status, out, err)
    obj = _one_object(out)
    assert obj["exit_code"] == code, (argv, obj)
    [line] = err.strip().splitlines()[-1:]
    assert obj["error"] and obj["error"] in line, (argv, obj, err)
    return obj


@pytest.fixture
def bad_files(tmp_path):
    rng = bytes((i * 7919 + 13) % 251 for i in range(4096))  # random-looking bytes
    (tmp_path / "random.pt").write_bytes(rng)
    (tmp_path / "empty.pt").write_bytes(b"")
    return {"random": tmp_path / "random.pt", "empty": tmp_path / "empty.pt",
            "missing": tmp_path / "missing.pt"}


@pytest.mark.parametrize("which", ["random", "empty", "missing"])
def test_every_command_answers_in_json_about_a_file_it_cannot_read(
        capsys, bad_files, tensors_file, tmp_path, which):
    bad = str(bad_files[which])
    good = str(tensors_file[0])
    out = str(tmp_path / "out.safetensors")
    for argv in (["info", bad], ["scan", bad], ["stats", bad], ["diff", bad, good],
                 ["diff", good, bad], ["arch", bad],
                 ["export", bad, "--to", "safetensors", "-o", out]):
        obj = _failed(capsys, 3, *argv, "--json")
        assert bad in obj["error"] and obj["path"] == bad, (argv, obj)
    assert not os.path.exists(out)


def test_load_answers_in_json(capsys, bad_files, numpy_namespace_file):
    obj = _failed(capsys, 3, "load", str(bad_files["random"]), "--json")
    assert obj["path"] == str(bad_files["random"])
    refused = _failed(capsys, 1, "load", str(numpy_namespace_file[0]), "--json")
    assert "run code" in refused["error"]
    _failed(capsys, 2, "load", str(numpy_namespace_file[0]), "--allow-dangerous", "--json")


def test_export_usage_errors_answer_in_json(capsys, tensors_file, tmp_path):
    path = str(tensors_file[0])
    out = str(tmp_path / "x.safetensors")
    for extra in (["--max-shard-size", "5GB"], ["--allow-dangerous"], ["--device", "banana"],
                  ["--rename", "("]):
        obj = _failed(capsys, 2, "export", path, "--to", "safetensors", "-o", out, *extra,
                      "--json")
        assert obj["error"], extra
    _failed(capsys, 2, "export", path, "--to", "safetensors", "-o", "https://example.com/x",
            "--json")
    assert os.listdir(tmp_path) == []


def test_argparse_usage_errors_answer_in_json(capsys, tensors_file):
    path = str(tensors_file[0])
    for argv in (["info", "--json"],  # no PATH
                 ["export", path, "-o", "x.pt", "--json"],  # no --to
                 ["export", path, "--to", "banana", "-o", "x.pt", "--json"],
                 ["stats", path, "--bins", "many", "--json"],
                 ["scan", path, "--json", "--bogus"],
                 ["demo", "--json"]):
        obj = _failed(capsys, 2, *argv)
        assert "usage" not in obj["error"] and "error:" not in obj["error"], obj


def test_a_command_that_printed_its_result_says_in_it_why_it_failed(
        capsys, tensors_file, training_ckpt, tmp_path):
    """scan of a truncated file gives its verdict, stats of a damaged tensor its other
    statistics, diff the other tensors: the one object also carries ``error`` and
    ``exit_code``."""
    damaged = tmp_path / "damaged.pt"
    with zipfile.ZipFile(tensors_file[0]) as zin, zipfile.ZipFile(damaged, "w") as zout:
        for item in zin.infolist():
            if not item.filename.endswith("/data/1"):
                zout.writestr(item, zin.read(item))
    _status, out, _err = _main(capsys, "info", str(damaged), "--json")
    [key] = [t["key"] for t in _one_object(out)["tensors"] if "problem" in t]
    stats = _failed(capsys, 3, "stats", str(damaged), key, "--json")
    assert "error" in stats["tensors"][key]
    compared = _failed(capsys, 3, "diff", str(damaged), str(tensors_file[0]), "--json")
    assert [e["status"] for e in compared["entries"] if e["key"] == key] == ["unreadable"]
    broken = tmp_path / "cut_pickle.pt"
    with zipfile.ZipFile(training_ckpt[0]) as zin, zipfile.ZipFile(broken, "w") as zout:
        for item in zin.infolist():
            data = zin.read(item)
            zout.writestr(item, data[:100] if item.filename.endswith("data.pkl") else data)
    scan = _failed(capsys, 3, "scan", str(broken), "--json")
    assert scan["verdict"] == "dangerous" and scan["readable"] is False


def test_a_success_prints_only_its_result(capsys, tensors_file):
    status, out, _err = _main(capsys, "info", str(tensors_file[0]), "--json")
    obj = _one_object(out)
    assert status == 0 and "error" not in obj and "exit_code" not in obj


def test_an_unexpected_failure_still_answers_in_json(capsys, monkeypatch):
    import ckpt_inspector.core.devices as devices

    def broken():
        raise RuntimeError("no driver\nmore")

    monkeypatch.setattr(devices, "list_devices", broken)
    with pytest.raises(RuntimeError):
        _main(capsys, "devices", "--json")
    obj = _one_object(capsys.readouterr().out)
    assert obj == {"error": "RuntimeError: no driver", "exit_code": 1}


def test_json_errors_from_a_real_process(bad_files):
    """What a script sees: the exit status, and one object on stdout."""
    proc = run_cli("scan", str(bad_files["empty"]), "--json")
    assert proc.returncode == 3
    obj = json.loads(proc.stdout)
    assert obj["exit_code"] == 3 and obj["error"] in proc.stderr
    proc = run_cli("export", "--json")
    assert proc.returncode == 2 and json.loads(proc.stdout)["exit_code"] == 2


def test_sigterm_ends_a_command_with_its_json_answer(tmp_path):
    """Was: SIGTERM killed info/scan/stats by the default action, printing nothing; the
    README promises one JSON object however --json ends, 143 after SIGTERM."""
    import signal
    import subprocess
    import sys
    import time

    path = tmp_path / "many.pt"
    code = ("import sys, torch; torch.save({f'l{i}.w': torch.zeros(1) for i in range(200000)}, "
            "sys.argv[1])")
    subprocess.run([sys.executable, "-c", code, str(path)], check=True, timeout=300)
    proc = subprocess.Popen([sys.executable, "-m", "ckpt_inspector", "scan", "--json",
                             str(path)], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)
    time.sleep(1.0)  # past the imports, into the read
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 143, (out, err)  # (reading 200,000 tensors takes seconds)
    assert json.loads(out) == {"error": "scan: terminated", "exit_code": 143}
    assert "terminated" in err and "Traceback" not in err


def test_one_long_string_referenced_many_times_is_cut_in_every_answer(tmp_path):
    """Found by the fuzz round: a 1 MB string memoised once and referenced 100,000 times
    made `info --json` write 1 GB (and 2 GB of memory), text `info` run for minutes."""
    import struct
    import subprocess
    import sys

    big = "x" * 1_000_000
    refs = 20_000
    raw = (b"\x80\x02]q\x00(X" + struct.pack("<I", len(big)) + big.encode() + b"q\x01"
           + b"h\x01" * (refs - 1) + b"e.")
    path = tmp_path / "refs.pkl"
    path.write_bytes(raw)
    for argv in (["info", "--json"], ["info"]):
        proc = subprocess.run([sys.executable, "-m", "ckpt_inspector", *argv, str(path)],
                              capture_output=True, text=True, timeout=300)
        assert proc.returncode == 0, proc.stderr[-500:]
        assert len(proc.stdout) < 15_000_000, (argv, len(proc.stdout))
    values = json.loads(subprocess.run(
        [sys.executable, "-m", "ckpt_inspector", "info", "--json", str(path)],
        capture_output=True, text=True, timeout=300).stdout)["values"]
    assert values[0]["value"].endswith("(1,000,000 characters in all)")
