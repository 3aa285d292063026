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
from ckpt_inspector.core.io import remote as remote_mod
from ckpt_inspector.core.scan import scan
from ckpt_inspector.core.tensors import to_numpy
from ckpt_inspector.core.tree import key_of

from rangeserver import RangeServer
from support import payload, run_cli

MIB = 1 << 20


pytestmark = pytest.mark.usefixtures("loopback_only")  # tests/conftest.py


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
    # the last 128 KiB and the first 256 KiB of a 1.1 MB file, not the tensors between
    assert server.bytes_sent() <= remote_mod.TAIL + remote_mod.HEAD_BLOCKS * remote_mod.BLOCK


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


@pytest.fixture(scope="module")
def sharded(tmp_path_factory, torch):
    from shards import save_sharded, state_dict

    folder = tmp_path_factory.mktemp("sharded") / "model"
    sd = state_dict(torch)
    weight_map = save_sharded(torch, folder, sd, shards=3)
    bins = tmp_path_factory.mktemp("bins") / "model"
    save_sharded(torch, bins, sd, ext="bin", shards=2)
    return folder, sd, weight_map, bins


def test_a_sharded_model_opens_from_its_index_url(sharded, torch):
    folder, sd, weight_map, _bins = sharded
    with RangeServer(folder) as rs:
        ckpt = open_checkpoint(rs.url("model.safetensors.index.json"))
        log = rs.requests()
    local = open_checkpoint(str(folder))
    assert ckpt.format == "hf-sharded"
    keys = {key_of(p): (n.tensor.dtype, n.tensor.shape, n.tensor.file) for p, n in ckpt.tensors()}
    assert keys == {key_of(p): (n.tensor.dtype, n.tensor.shape, n.tensor.file)
                    for p, n in local.tensors()}
    assert set(keys) == set(sd) and ckpt.metadata["config"]["model_type"] == "toy"
    shards = set(weight_map.values())
    # the index and config.json once each, each shard in one or two requests
    assert len(log) <= 2 + 2 * len(shards), log
    assert sum(r.path.endswith(".json") for r in log) == 2
    # what the window's status bar says: every file's requests (config.json aside)
    assert ckpt.metadata["remote"]["requests"] == len(log) - 1
    assert all(r.range for r in log if r.path.endswith(".safetensors"))
    node = {key_of(p): n for p, n in ckpt.tensors()}["lm_head.weight"]
    assert np.array_equal(to_numpy(node.tensor), sd["lm_head.weight"].numpy())


def test_a_missing_remote_shard_leaves_the_others_readable(sharded, tmp_path):
    import shutil

    folder, _sd, weight_map, _bins = sharded
    copy = tmp_path / "model"
    shutil.copytree(folder, copy)
    gone = sorted(set(weight_map.values()))[0]
    (copy / gone).unlink()
    with RangeServer(copy) as rs:
        ckpt = open_checkpoint(rs.url("model.safetensors.index.json"))
    damaged = {key_of(p) for p, n in ckpt.tensors() if n.tensor.problem}
    assert damaged == {k for k, v in weight_map.items() if v == gone}
    assert any(gone in w for w in ckpt.warnings)


def test_remote_bin_shards_are_scanned_and_a_payload_never_runs(sharded, tmp_path, torch):
    import shutil

    from shards import marker_payload

    _folder, _sd, _weight_map, bins = sharded
    copy = tmp_path / "model"
    shutil.copytree(bins, copy)
    marker = tmp_path / "shard-marker"
    shard = sorted(copy.glob("pytorch_model-*.bin"))[0]
    marker_payload(torch, shard, marker)
    with RangeServer(copy) as rs:
        proc = run_cli("scan", "--json", rs.url("pytorch_model.bin.index.json"))
    doc = json.loads(proc.stdout)
    assert proc.returncode != 0 and doc["verdict"] == "dangerous"
    assert any(shard.name in json.dumps(f) for f in doc["findings"])
    assert not marker.exists()


def test_a_cancelled_read_stops_at_its_next_request(server, files):
    """The window's Cancel: the token stops the reading of a remote model between requests
    (and the threads reading its shards with it)."""
    import threading

    from ckpt_inspector.core.ops.session import load_file
    from ckpt_inspector.core.progress import Cancelled

    token = threading.Event()
    token.set()
    with pytest.raises(Cancelled):
        load_file(server.url("many.pt"), cancel=token)
    assert server.requests("many.pt") == []
    ckpt = load_file(server.url("many.pt"), cancel=threading.Event()).ckpt  # not set: reads
    assert len(list(ckpt.tensors())) == 800


def test_export_and_diff_stream_a_remote_file_a_piece_at_a_time(tmp_path, torch):
    """A 48 MiB tensor of a remote torch zip is exported to a local safetensors file and
    compared with the local copy without any request larger than a piece."""
    from safetensors.numpy import load_file

    big = {"big.weight": torch.arange(12 << 20, dtype=torch.float32), "b": torch.ones(3)}
    torch.save(big, tmp_path / "big.pt")
    out = tmp_path / "out.safetensors"
    with RangeServer(tmp_path) as rs:
        proc = run_cli("export", rs.url("big.pt"), "--to", "safetensors", "-o", str(out))
        assert proc.returncode == 0, proc.stderr
        diff = run_cli("diff", "--json", rs.url("big.pt"), str(tmp_path / "big.pt"))
        assert diff.returncode == 0, diff.stdout + diff.stderr
        largest = max(r.sent for r in rs.requests())
    assert np.array_equal(load_file(str(out))["big.weight"], big["big.weight"].numpy())
    assert largest <= (16 << 20) + (256 << 10)  # pieces, never the whole 48 MiB tensor


def test_a_server_that_stops_answering_fails_in_time(tmp_path):
    """A server that accepts and never answers: exit 3 in one line after the timeout
    (CKPT_INSPECTOR_TIMEOUT), not a hang."""
    import threading

    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(8)
    held = []
    stop = threading.Event()

    def accept():
        listener.settimeout(0.2)
        while not stop.is_set():
            try:
                held.append(listener.accept()[0])  # kept open, never answered
            except OSError:
                continue

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    try:
        url = f"http://127.0.0.1:{listener.getsockname()[1]}/m.pt"
        proc = run_cli("info", url, env={"CKPT_INSPECTOR_TIMEOUT": "1"})
    finally:
        stop.set()
        thread.join()
        for conn in held:
            conn.close()
        listener.close()
    assert proc.returncode == 3 and "did not answer in time" in proc.stderr, proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1


def test_load_of_a_url_is_built_by_our_readers_and_never_runs_code(server, files):
    proc = run_cli("load", "--json", server.url("many.pt"))
    assert proc.returncode == 0, proc.stderr
    doc = json.loads(proc.stdout)
    assert doc["tensors"] == 800 and "no code ran" in doc["mode"]
    refused = run_cli("load", "--run-code", server.url("evil.pkl"))
    assert refused.returncode != 0 and "download it first" in refused.stderr
    assert not files[3].exists()


def _gguf_listing(ckpt):
    return [(key_of(p), n.tensor.dtype, n.tensor.shape) for p, n in ckpt.tensors()]


def test_a_gguf_file_reads_from_its_header_alone(tmp_path):
    """gguf's reader parses a sparse copy holding the fetched header; quantized tensors
    come dequantized from their own byte ranges."""
    from ckpt_inspector.core.tensors import to_numpy as values

    from gguf_files import write_gguf

    path = write_gguf(tmp_path / "tiny.gguf")
    local = open_checkpoint(str(path))
    with RangeServer(tmp_path) as rs:
        remote = open_checkpoint(rs.url("tiny.gguf"))
        assert len(rs.requests()) <= 2  # the tail, then the start (the whole header)
        assert _gguf_listing(remote) == _gguf_listing(local)
        assert remote.metadata["GGUF data offset"] == local.metadata["GGUF data offset"]
        a = {key_of(p): n for p, n in remote.tensors()}
        b = {key_of(p): n for p, n in local.tensors()}
        for key in a:
            assert np.array_equal(values(a[key].tensor), values(b[key].tensor)), key


def test_a_gguf_header_larger_than_the_first_read_is_read_again_whole(tmp_path):
    import gguf

    w = gguf.GGUFWriter(str(tmp_path / "vocab.gguf"), "llama")
    w.add_token_list([f"token-{i:07d}-{'x' * 20}" for i in range(200_000)])  # ~8 MB
    w.add_tensor("w", np.arange(64, dtype=np.float32))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    local = open_checkpoint(str(tmp_path / "vocab.gguf"))
    with RangeServer(tmp_path) as rs:
        remote = open_checkpoint(rs.url("vocab.gguf"))
        sent = rs.bytes_sent()
    assert _gguf_listing(remote) == _gguf_listing(local)
    assert remote.metadata["GGUF data offset"] > 4 << 20
    assert sent < 2 * (tmp_path / "vocab.gguf").stat().st_size


def test_a_server_that_sends_more_than_asked_is_refused_in_bounded_memory(files):
    """An answer longer than the range asked for (a hostile server) is cut off at the
    range's length: reading stops there, with one line."""
    import http.server
    import threading

    data = (files[0] / "many.pt").read_bytes()

    class Liar(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            self.send_response(206)
            self.send_header("Content-Range", f"bytes {len(data) - 1000}-{len(data) - 1}/"
                                              f"{len(data)}")
            self.send_header("Content-Length", str(64 << 20))
            self.end_headers()
            try:
                for _ in range(64):
                    self.wfile.write(bytes(1 << 20))
            except OSError:
                pass

        def log_message(self, *args):
            pass

    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Liar)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    try:
        with pytest.raises(CheckpointError, match="more bytes than were asked"):
            open_checkpoint(f"http://127.0.0.1:{httpd.server_address[1]}/many.pt")
    finally:
        httpd.shutdown()
        httpd.server_close()


def test_credentials_in_a_url_are_used_but_never_shown(server):
    url = server.url("many.pt").replace("http://", "http://someone:s3cret@")
    for args in (("info", "--json", url), ("info", url), ("scan", "--json", url),
                 ("info", url.replace("many.pt", "nothing.pt"))):
        proc = run_cli(*args)
        assert "s3cret" not in proc.stdout + proc.stderr, args
    assert json.loads(run_cli("info", "--json", url).stdout)["path"].startswith(
        "http://***@127.0.0.1")


def test_a_sharded_model_on_a_server_without_ranges_fails_in_one_line(sharded, tmp_path):
    """The server's failure is the model's: exit 3, not every shard shown damaged."""
    import shutil

    from shards import save_sharded, state_dict

    folder = tmp_path / "big"
    save_sharded(torch_module(), folder, state_dict(torch_module()), shards=2)
    for shard in folder.glob("*.safetensors"):  # past what one suffix read holds
        data = shard.read_bytes()
        shutil.copy(shard, shard.with_suffix(".tmp"))
        shard.write_bytes(data)
    with RangeServer(folder) as rs:
        rs.ignore_range = {p.name for p in folder.glob("*.safetensors")}
        big = bytes(300_000)
        for shard in folder.glob("*.safetensors"):
            rs.put(shard.name, shard.read_bytes() + big)
        proc = run_cli("info", rs.url("model.safetensors.index.json"))
    assert proc.returncode == 3 and "byte-range" in proc.stderr, proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1


def torch_module():
    import torch

    return torch


def test_load_of_a_dangerous_url_exits_1_though_nothing_ran(server, files):
    proc = run_cli("load", server.url("evil.pkl"))
    assert proc.returncode == 1 and "dangerous" in proc.stderr
    assert not files[3].exists()


def test_an_export_to_a_url_is_a_usage_error(files):
    proc = run_cli("export", str(files[0] / "many.pt"), "--to", "safetensors", "-o",
                   "http://127.0.0.1:9/out.safetensors")
    assert proc.returncode == 2 and "writes no URL" in proc.stderr


def test_live_counts_include_the_tensor_data_fetched_later(server, files):
    """What the window's status bar shows: the structure, then each tensor fetched."""
    from ckpt_inspector.core.io.remote import live_counts

    url = server.url("m.safetensors")
    ckpt = open_checkpoint(url)
    before = live_counts(url)
    assert before["requests"] == ckpt.metadata["remote"]["requests"]
    node = {key_of(p): n for p, n in ckpt.tensors()}["head.weight"]
    to_numpy(node.tensor)
    after = live_counts(url)
    assert after["requests"] == before["requests"] + 1
    assert after["bytes"] == before["bytes"] + node.tensor.nbytes
