"""Checkpoints at ``s3://`` URLs, through s3fs against moto's S3 server on 127.0.0.1: the
endpoint set the way a user sets it (``AWS_ENDPOINT_URL_S3``, ``AWS_ENDPOINT_URL`` or
fsspec's ``FSSPEC_S3_ENDPOINT_URL``), requests counted from the server's own log."""

from __future__ import annotations

import json
import logging
import re
import sys

import numpy as np
import pytest

from ckpt_inspector.core import open_checkpoint
from ckpt_inspector.core.errors import CheckpointError
from ckpt_inspector.core.io.remote_fs import describe_error, filesystem, forget_filesystems
from ckpt_inspector.core.scan import scan
from ckpt_inspector.core.tensors import to_numpy
from ckpt_inspector.core.tree import key_of

from support import payload, run_cli

s3fs = pytest.importorskip("s3fs")
moto_server = pytest.importorskip("moto.server")

MIB = 1 << 20
BUCKET = "ckpts"
# a request line as werkzeug logs it (coloured or not): "GET /ckpts/many.pt HTTP/1.1" 206
_LINE = re.compile(r'"(?:\x1b\[[\d;]*m)*([A-Z]+) (\S+) HTTP/[\d.]+(?:\x1b\[[\d;]*m)*" (\d+)')


class RequestLog(logging.Handler):
    """moto's server answers through werkzeug, which logs each request before its body is
    sent: (method, path, status) of every request the server saw."""

    def __init__(self):
        super().__init__()
        self.seen: list[tuple[str, str, int]] = []

    def emit(self, record):
        m = _LINE.search(record.getMessage())
        if m:
            self.seen.append((m.group(1), m.group(2), int(m.group(3))))

    def requests(self, key: str) -> list[tuple[str, str, int]]:
        path = f"/{BUCKET}/{key}"
        return [r for r in self.seen if r[1] == path or r[1].startswith(path + "?")]


pytestmark = pytest.mark.usefixtures("loopback_only")  # tests/conftest.py


@pytest.fixture(scope="module")
def s3server(tmp_path_factory):
    """moto's S3 on a free loopback port; this process and the CLI children it starts see
    fake credentials and the endpoint, and none of the user's AWS configuration."""
    server = moto_server.ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    log = RequestLog()
    logging.getLogger("werkzeug").addHandler(log)
    nothing = tmp_path_factory.mktemp("aws") / "none"
    with pytest.MonkeyPatch.context() as mp:
        for name, value in {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
                            "AWS_SESSION_TOKEN": "testing", "AWS_DEFAULT_REGION": "us-east-1",
                            "AWS_CONFIG_FILE": str(nothing),
                            "AWS_SHARED_CREDENTIALS_FILE": str(nothing),
                            "AWS_EC2_METADATA_DISABLED": "true",
                            "AWS_ENDPOINT_URL_S3": f"http://{host}:{port}"}.items():
            mp.setenv(name, value)
        for name in ("AWS_PROFILE", "AWS_ENDPOINT_URL", "FSSPEC_S3_ENDPOINT_URL"):
            mp.delenv(name, raising=False)
        forget_filesystems()
        try:
            yield server, log, f"http://{host}:{port}"
        finally:
            forget_filesystems()
            logging.getLogger("werkzeug").removeHandler(log)
            server.stop()


@pytest.fixture(scope="module")
def bucket(s3server, tmp_path_factory, torch):
    """A safetensors file, a torch.save zip of 300 tensors and a pickle whose payload would
    create a marker, made here and uploaded; (log, local folder, tensors, marker)."""
    from safetensors.torch import save_file

    _server, log, _endpoint = s3server
    folder = tmp_path_factory.mktemp("s3-files")
    gen = torch.Generator().manual_seed(1)
    small = {f"layers.{i}.weight": torch.randn(16, 16, generator=gen) for i in range(40)}
    small["head.weight"] = torch.randn(512, 512, generator=gen)  # 1 MiB
    save_file(small, str(folder / "m.safetensors"))
    many = {f"blocks.{i // 3}.part{i % 3}.weight": torch.randn(1000, generator=gen)
            for i in range(300)}
    torch.save(many, folder / "many.pt")
    marker = folder.parent / "s3-marker"
    (folder / "evil.pkl").write_bytes(payload(marker))
    fs = s3fs.S3FileSystem(skip_instance_cache=True)
    fs.makedirs(BUCKET, exist_ok=True)  # other modules use the same server
    for name in ("m.safetensors", "many.pt", "evil.pkl"):
        fs.put_file(str(folder / name), f"{BUCKET}/{name}")
    return log, folder, {**small, **many}, marker


def url(key: str) -> str:
    return f"s3://{BUCKET}/{key}"


def listing(ckpt):
    return [(key_of(p), n.tensor.dtype, n.tensor.shape) for p, n in ckpt.tensors()]


@pytest.mark.parametrize("name", ["m.safetensors", "many.pt"])
def test_an_s3_object_reads_as_the_local_file(bucket, name):
    log, folder, tensors, _marker = bucket
    log.seen.clear()
    remote = open_checkpoint(url(name))
    assert listing(remote) == listing(open_checkpoint(str(folder / name)))
    seen = log.requests(name)
    assert all(r[0] in ("HEAD", "GET") and r[2] in (200, 206) for r in seen), seen
    # the open is what s3fs sent about the object: a HEAD, or none where it answers from
    # the bucket's listing it already holds
    assert remote.metadata["remote"]["requests"] == len(seen)  # each one the server saw
    assert remote.metadata["remote"]["size"] == (folder / name).stat().st_size
    if name == "m.safetensors":
        assert len(seen) <= 3, seen  # HEAD, the end, the header
    else:  # the structure of a zip of 300 tensors, not the file
        assert len(seen) <= 8 and remote.metadata["remote"]["bytes"] <= 2 * MIB, seen
    key = "head.weight" if name == "m.safetensors" else "blocks.7.part1.weight"
    node = {key_of(p): n for p, n in remote.tensors()}[key]
    before = remote.metadata["remote"]["bytes"]
    assert np.array_equal(to_numpy(node.tensor), tensors[key].numpy())
    assert log.requests(name)[len(seen):] and all(
        r[0] == "GET" and r[2] == 206 for r in log.requests(name)[len(seen):])
    assert remote.metadata["remote"]["bytes"] - before <= node.tensor.nbytes + 2 * MIB


def test_a_pickle_that_would_run_code_is_dangerous_and_never_runs(bucket):
    _log, _folder, _tensors, marker = bucket
    assert scan(open_checkpoint(url("evil.pkl"))).verdict == "dangerous"
    proc = run_cli("scan", url("evil.pkl"))
    assert proc.returncode != 0 and "dangerous" in proc.stdout.lower(), proc.stderr
    assert not marker.exists()


@pytest.mark.parametrize("variable", [
    "AWS_ENDPOINT_URL_S3", "AWS_ENDPOINT_URL", "FSSPEC_S3_ENDPOINT_URL"])
def test_the_cli_reads_s3_with_the_endpoint_a_user_sets(bucket, s3server, monkeypatch, variable):
    monkeypatch.delenv("AWS_ENDPOINT_URL_S3")
    monkeypatch.setenv(variable, s3server[2])
    proc = run_cli("info", "--json", url("many.pt"))
    assert proc.returncode == 0, proc.stderr
    doc = json.loads(proc.stdout)
    assert len(doc["tensors"]) == 300 and doc["metadata"]["remote"]["requests"] <= 8


@pytest.mark.parametrize("where, words", [
    (url("nothing.pt"), "no such file"), ("s3://no-such-bucket/m.pt", "no such bucket")])
def test_a_missing_key_or_bucket_is_one_line_and_exit_3(bucket, where, words):
    proc = run_cli("info", where)
    assert proc.returncode == 3 and words in proc.stderr, proc.stderr
    assert "Traceback" not in proc.stderr and len(proc.stderr.strip().splitlines()) == 1


def test_refused_credentials_name_aws_credentials(bucket, monkeypatch):
    """moto checks signatures once its IAM auth is on: the fake key is then unknown (403)."""
    import moto.settings

    monkeypatch.setattr(moto.settings, "INITIAL_NO_AUTH_ACTION_COUNT", 0)
    forget_filesystems()
    try:
        with pytest.raises(CheckpointError, match=r"access denied.*AWS credentials"):
            open_checkpoint(url("m.safetensors"))
        proc = run_cli("info", url("m.safetensors"))
    finally:
        forget_filesystems()
    assert proc.returncode == 3 and "AWS credentials" in proc.stderr, proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1
    assert "AWS credentials" in describe_error(PermissionError("Forbidden"), url("x"))


def test_an_object_replaced_while_read_fails_in_one_line(bucket, tmp_path):
    _log, folder, _tensors, _marker = bucket
    fs = s3fs.S3FileSystem(skip_instance_cache=True)
    fs.put_file(str(folder / "m.safetensors"), f"{BUCKET}/changing.safetensors")
    ckpt = open_checkpoint(url("changing.safetensors"))
    node = {key_of(p): n for p, n in ckpt.tensors()}["head.weight"]
    fs.pipe_file(f"{BUCKET}/changing.safetensors", b"another object" * 100_000)
    with pytest.raises(CheckpointError, match="changed"):
        to_numpy(node.tensor)


def test_a_url_whose_library_is_missing_names_the_extra(monkeypatch):
    monkeypatch.setitem(sys.modules, "gcsfs", None)  # whether or not it is installed
    with pytest.raises(CheckpointError, match=re.escape("pip install 'ckpt-inspector[gcs]'")):
        filesystem("gs://b/k")
    monkeypatch.setitem(sys.modules, "s3fs", None)
    with pytest.raises(CheckpointError, match=re.escape("pip install 'ckpt-inspector[s3]'")):
        filesystem("s3://b/k")


def test_an_unavailable_store_is_tried_a_few_times_not_botocores_and_s3fs(s3server):
    """botocore tries a failed request five times and s3fs a few more, each try again of
    ours multiplying them (a dead endpoint took 12 s): here each request is tried once by
    the libraries and three more times by ckpt-inspector, for a 503 as for no server."""
    import threading
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    seen: list[str] = []

    class Unavailable(BaseHTTPRequestHandler):
        def _answer(self):
            seen.append(self.command)
            body = b"<Error><Code>SlowDown</Code><Message>Please reduce</Message></Error>"
            self.send_response(503)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            if self.command != "HEAD":
                self.wfile.write(body)

        do_GET = do_HEAD = _answer

        def log_message(self, *args):
            pass

    with ThreadingHTTPServer(("127.0.0.1", 0), Unavailable) as httpd:
        threading.Thread(target=httpd.serve_forever, daemon=True).start()
        try:
            proc = run_cli("info", f"s3://{BUCKET}/m.safetensors", env={
                "AWS_ENDPOINT_URL_S3": f"http://127.0.0.1:{httpd.server_address[1]}"})
        finally:
            httpd.shutdown()
    assert proc.returncode == 3 and len(proc.stderr.strip().splitlines()) == 1, proc.stderr
    assert "Traceback" not in proc.stderr
    assert 1 < len(seen) <= 4, seen
