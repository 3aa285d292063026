"""Checkpoints over HTTP, from a loopback server that logs every request: the structure in
a few ranged requests, one tensor's statistics for that tensor's bytes, the server's
failures in one line, and the verdict from the bytes read."""

from __future__ import annotations

import json
import socket

import numpy as np
import pytest

from ckpt_inspector.core import open_checkpoint
from ckpt_inspector.core.errors import CheckpointError
from ckpt_inspector.core.scan import scan
from ckpt_inspector.core.tensors import to_numpy
from ckpt_inspector.core.tree import key_of

from rangeserver import RangeServer
from support import payload, run_cli

MIB = 1 << 20


@pytest.fixture(autouse=True)
def loopback_only(monkeypatch):
    """Nothing here may reach another address than 127.0.0.1."""
    real = socket.socket.connect

    def connect(self, address):
        if isinstance(address, tuple) and address[0] not in ("127.0.0.1", "localhost"):
            raise AssertionError(f"a test tried to reach {address}")
        return real(self, address)

    monkeypatch.setattr(socket.socket, "connect", connect)


@pytest.fixture(scope="module")
def files(tmp_path_factory, torch):
    """A safetensors file, a torch.save zip of 800 tensors (2.6 MB of data), a pickle whose
    payload would create a marker."""
    from safetensors.torch import save_file

    folder = tmp_path_factory.mktemp("served")
    gen = torch.Generator().manual_seed(0)
    small = {f"layers.{i}.weight": torch.randn(16, 16, generator=gen) for i in range(40)}
    small["head.weight"] = torch.randn(512, 512, generator=gen)  # 1 MiB
    save_file(small, str(folder / "m.safetensors"))
    many = {f"blocks.{i // 4}.part{i % 4}.weight": torch.randn(800, generator=gen)
            for i in range(800)}
    torch.save(many, folder / "many.pt")
    marker = folder.parent / "remote-marker"
    (folder / "evil.pkl").write_bytes(payload(marker))
    return folder, small, many, marker


@pytest.fixture
def server(files):
    with RangeServer(files[0]) as rs:
        yield rs


def gets(rs: RangeServer, name: str) -> list:
    return [r for r in rs.requests(name) if r.method == "GET"]


def test_a_safetensors_file_takes_two_requests_and_reads_as_locally(server, files):
    folder, _small, _many, _marker = files
    remote = open_checkpoint(server.url("m.safetensors"))
    local = open_checkpoint(str(folder / "m.safetensors"))
    as_list = [(key_of(p), n.tensor.dtype, n.tensor.shape) for p, n in local.tensors()]
    assert [(key_of(p), n.tensor.dtype, n.tensor.shape) for p, n in remote.tensors()] == as_list
    log = server.requests("m.safetensors")
    assert len(log) <= 2 and all(r.range for r in log), log  # the header and the tail
    assert remote.metadata["remote"]["requests"] == len(log)
    assert server.bytes_sent() < 200_000  # of a 1.1 MB file


def test_a_torch_zip_of_800_tensors_structure_in_few_requests(server, files):
    _folder, _small, _many, _marker = files
    ckpt = open_checkpoint(server.url("many.pt"))
    assert len(list(ckpt.tensors())) == 800
    log = server.requests("many.pt")
    assert len(log) <= 8 and server.bytes_sent("many.pt") <= 2 * MIB, log
    assert scan(ckpt).verdict == "safe"


def test_one_tensors_statistics_fetch_that_tensor(server, files):
    _folder, small, _many, _marker = files
    ckpt = open_checkpoint(server.url("m.safetensors"))
    node = {key_of(p): n for p, n in ckpt.tensors()}["head.weight"]
    server.clear()
    values = to_numpy(node.tensor)
    assert np.array_equal(values, small["head.weight"].numpy())
    assert server.bytes_sent() <= node.tensor.nbytes + 2 * MIB


def test_the_cli_reads_a_url_and_says_what_it_took(server, files):
    proc = run_cli("info", "--json", server.url("many.pt"))
    assert proc.returncode == 0, proc.stderr
    doc = json.loads(proc.stdout)
    assert len(doc["tensors"]) == 800 and doc["metadata"]["remote"]["requests"] <= 8
    stats = run_cli("stats", "--json", server.url("m.safetensors"), "head.weight")
    assert stats.returncode == 0, stats.stderr
    assert abs(json.loads(stats.stdout)["tensors"]["head.weight"]["mean"]
               - float(files[1]["head.weight"].double().mean())) < 1e-9


def test_a_pickle_that_would_run_code_is_dangerous_and_never_runs(server, files):
    _folder, _small, _many, marker = files
    proc = run_cli("scan", server.url("evil.pkl"))
    assert proc.returncode != 0 and "dangerous" in proc.stdout.lower()
    assert not marker.exists()


@pytest.mark.parametrize("status, words", [
    (404, "no such file"), (403, "access denied"), (401, "access denied")])
def test_a_refusal_is_one_line_and_exit_3(server, status, words):
    server.fail_first = {"m.safetensors": [status] * 10}
    proc = run_cli("info", server.url("m.safetensors"))
    assert proc.returncode == 3 and words in proc.stderr
    assert "Traceback" not in proc.stderr and len(proc.stderr.strip().splitlines()) == 1


def test_transient_server_errors_are_tried_again(server, files):
    server.fail_first = {"m.safetensors": [500, 503]}
    ckpt = open_checkpoint(server.url("m.safetensors"))
    assert len(list(ckpt.tensors())) == len(files[1])


def test_a_server_without_ranges_is_refused_before_the_file_is_sent(server):
    server.ignore_range = True
    with pytest.raises(CheckpointError, match="byte-range"):
        open_checkpoint(server.url("many.pt"))
    assert len(server.requests("many.pt")) == 1


def test_a_file_that_changes_while_read_fails_in_one_line(server):
    server.change_after = {"many.pt": 1}  # after the first request, another file
    with pytest.raises(CheckpointError, match="changed"):
        open_checkpoint(server.url("many.pt"))


def test_a_connection_that_keeps_dropping_fails_in_one_line(server):
    server.drop_after_bytes = {"many.pt": 100}
    with pytest.raises(CheckpointError):
        open_checkpoint(server.url("many.pt"))
