"""The byte Source readers read from, and the reader registry over it (no torch, no Qt)."""

from __future__ import annotations

import io
import pickle
import zipfile

import pytest

from ckpt_inspector.core import CheckpointError, open_checkpoint
from ckpt_inspector.core.formats import _zip, detect_format, reader_for, readers
from ckpt_inspector.core.io.opening import open_source
from ckpt_inspector.core.io.source import BytesSource, LocalSource


def test_local_source_reads_ranges_and_caches_its_head(tmp_path):
    path = tmp_path / "f.bin"
    path.write_bytes(bytes(range(256)) * 4)
    src = open_source(path)
    assert isinstance(src, LocalSource) and src.path == str(path) and src.name == str(path)
    assert len(src) == 1024 and src.read(250, 10) == bytes(range(250, 256)) + bytes(range(4))
    assert src.read(1020, 100) == bytes(range(252, 256))  # fewer at the end
    assert src.head(4) == b"\0\1\2\3"
    path.write_bytes(b"changed")  # the head was read once and is kept
    assert src.head(4) == b"\0\1\2\3"
    with pytest.raises(ValueError):
        src.read(-1, 4)


def test_bytes_source_is_nested_and_its_ranges_are_views():
    src = BytesSource("outer.zip!inner.pt", b"abcdefgh")
    assert src.path is None and len(src) == 8 and src.read(2, 3) == b"cde"
    assert src.range(2, 3).read() == b"cde"


def test_cached_parses_once_and_raises_the_same_failure_again():
    src = BytesSource("x", b"")
    calls = []

    def make():
        calls.append(1)
        raise ValueError("bad")

    for _ in range(3):
        with pytest.raises(ValueError, match="bad"):
            src.cached("k", make)
    assert len(calls) == 1
    assert src.cached("n", lambda: 42) == 42 and src.cached("n", lambda: 0) == 42


def _zip_of(members: dict[str, bytes]) -> bytes:
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w") as z:
        for name, body in members.items():
            z.writestr(name, body)
    return out.getvalue()


def test_detection_and_reading_share_one_parse_of_the_zip_directory(tmp_path, monkeypatch):
    path = tmp_path / "model.pt"
    path.write_bytes(_zip_of({"model/data.pkl": pickle.dumps({"a": 1}, protocol=2),
                              "model/version": b"3\n"}))
    parses = []
    real = _zip.open_directory
    monkeypatch.setattr(_zip, "open_directory", lambda raw: parses.append(1) or real(raw))
    ckpt = open_checkpoint(path)
    assert ckpt.format == "torch-zip" and len(parses) == 1


def test_every_reader_has_a_name_a_sniff_and_a_read():
    names = [r.name for r in readers()]
    assert len(names) == len(set(names))
    for expected in ("torchscript", "torch-zip", "pt2", "archive", "torch-tar", "archive-tar",
                     "torch-legacy", "safetensors", "onnx", "pickle"):
        assert expected in names
    assert all(callable(r.sniff) and callable(r.read) for r in readers())


def test_a_torchscript_archive_has_its_own_reader(tmp_path):
    plain, script = tmp_path / "plain.pt", tmp_path / "script.pt"
    data = pickle.dumps({"a": 1}, protocol=2)
    plain.write_bytes(_zip_of({"m/data.pkl": data, "m/version": b"3\n"}))
    script.write_bytes(_zip_of({"m/data.pkl": data, "m/constants.pkl": pickle.dumps(()),
                                "m/code/__torch__.py": b"", "m/version": b"3\n"}))
    assert detect_format(plain) == "torch-zip" and detect_format(script) == "torchscript"
    assert open_checkpoint(script).format == "torchscript"
    assert open_checkpoint(plain).format == "torch-zip"


def test_detection_takes_a_source_or_a_path(tmp_path):
    path = tmp_path / "plain.pkl"
    path.write_bytes(pickle.dumps([1, 2], protocol=4))
    assert detect_format(path) == "pickle" == reader_for(open_source(path)).name
    empty = tmp_path / "empty"
    empty.write_bytes(b"")
    with pytest.raises(CheckpointError, match="empty file"):
        detect_format(empty)


@pytest.mark.skipif(not hasattr(__import__("os"), "mkfifo"), reason="no named pipes here")
def test_a_named_pipe_or_a_device_is_refused_not_waited_on(tmp_path):
    """Opening a named pipe for reading blocks until something writes to it: `scan` once
    waited forever. Now it says what the path is, at once, in JSON too."""
    import json
    import os
    import subprocess
    import sys

    fifo = tmp_path / "model.pt"
    os.mkfifo(fifo)
    for path, what in ((fifo, "named pipe"), ("/dev/zero", "character device")):
        proc = subprocess.run([sys.executable, "-m", "ckpt_inspector", "scan", str(path),
                               "--json"], capture_output=True, text=True, timeout=60)
        assert proc.returncode == 3, proc.stderr
        answer = json.loads(proc.stdout)
        assert what in answer["error"] and answer["exit_code"] == 3
    with pytest.raises(CheckpointError, match="named pipe"):
        open_checkpoint(str(fifo))
