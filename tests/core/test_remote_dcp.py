"""torch.distributed.checkpoint folders at a URL (``core/layouts/dcp``, ``_dcp_items``):
over plain HTTP by the URL of ``.metadata`` (its storage entries name the ``.distcp``
files: no listing needed), over S3 by the folder's prefix; each item's structure read over
its byte range, never a whole ``.distcp`` file; requests counted from the servers' logs."""

from __future__ import annotations

import pickle
import shutil
import socket

import dcp_files
import numpy as np
import pytest

from ckpt_inspector.core import open_checkpoint
from ckpt_inspector.core.errors import CheckpointError
from ckpt_inspector.core.io.remote_fs import forget_filesystems
from ckpt_inspector.core.scan import scan
from ckpt_inspector.core.tensors import to_numpy
from ckpt_inspector.core.tree import key_of

from rangeserver import RangeServer

try:  # moto's S3 server and its request log, as the S3 tests set them up
    from test_remote_s3 import BUCKET, s3server  # s3server: a fixture
except pytest.skip.Exception:
    s3server = None


pytestmark = pytest.mark.usefixtures("loopback_only")  # tests/conftest.py


@pytest.fixture(scope="module")
def two_ranks(tmp_path_factory):
    """Two gloo ranks, DTensors sharded by rows: __0_0.distcp and __1_0.distcp."""
    root = tmp_path_factory.mktemp("dcp-remote")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    dcp_files.save_two_ranks(root / "ckpt", port)
    return root / "ckpt"


@pytest.fixture
def served(two_ranks):
    with RangeServer(two_ranks) as rs:
        yield rs


def _listing(ckpt):
    return {key_of(p): (n.tensor.dtype, n.tensor.shape, n.tensor.pieces, n.tensor.file)
            for p, n in ckpt.tensors()}


def _distcp(folder):
    return sorted(p.name for p in folder.iterdir() if p.suffix == ".distcp")


def test_metadata_url_reads_as_the_local_folder(served, two_ranks):
    remote = open_checkpoint(served.url(".metadata"))
    local = open_checkpoint(str(two_ranks))
    assert remote.format == local.format == "dcp"
    assert _listing(remote) == _listing(local)
    assert {f["path"]: f["size"] for f in remote.files} == \
        {f["path"]: f["size"] for f in local.files}
    assert not remote.warnings and scan(remote).verdict == "safe"
    # the structure: .metadata in one request, each .distcp in a few, none read whole
    assert len(served.requests(".metadata")) == 1
    names = _distcp(two_ranks)
    for name in names:
        log = served.requests(name)
        assert 1 <= len(log) <= 3 and all(r.range for r in log), (name, log)
    total = len(served.requests())
    assert total <= 1 + 3 * len(names)
    assert remote.metadata["remote"]["requests"] == total


def test_a_sharded_tensor_values_fetch_its_pieces(served, two_ranks):
    remote = open_checkpoint(served.url(".metadata"))
    local = open_checkpoint(str(two_ranks))
    r = {key_of(p): n.tensor for p, n in remote.tensors()}
    loc = {key_of(p): n.tensor for p, n in local.tensors()}
    served.clear()
    for key in ("model.w", "model.b", "model.v", "model.replicated"):
        assert np.array_equal(to_numpy(r[key]), to_numpy(loc[key])), key
    assert np.array_equal(to_numpy(r["model.w"]),
                          np.arange(35, dtype=np.float32).reshape(7, 5))
    assert all(req.range for req in served.requests())  # ranges, never a whole file
    assert served.bytes_sent() <= 4 * sum(loc[k].nbytes for k in
                                          ("model.w", "model.b", "model.v", "model.replicated"))


def test_a_payload_in_metadata_is_dangerous_over_http_and_never_runs(two_ranks, tmp_path,
                                                                      torch):
    from torch.distributed.checkpoint import FileSystemReader

    from support import Payload

    folder = tmp_path / "evil"
    shutil.copytree(two_ranks, folder)
    marker = tmp_path / "marker"
    meta = FileSystemReader(str(folder)).read_metadata()  # our own file: trusted here
    meta.planner_data = {"x": Payload(f"touch {marker}")}
    (folder / ".metadata").write_bytes(pickle.dumps(meta))
    with RangeServer(folder) as rs:
        ckpt = open_checkpoint(rs.url(".metadata"))
    report = scan(ckpt)
    assert report.verdict == "dangerous"
    assert any(f.file == ".metadata" and f.severity == "dangerous" for f in report.findings)
    assert "model.w" in _listing(ckpt)
    assert not marker.exists()


def test_a_missing_distcp_marks_its_tensors_damaged(two_ranks, tmp_path):
    folder = tmp_path / "broken"
    shutil.copytree(two_ranks, folder)
    (folder / "__1_0.distcp").unlink()
    with RangeServer(folder) as rs:
        ckpt = open_checkpoint(rs.url(".metadata"))
        assert len(rs.requests("__1_0.distcp")) == 1  # its 404
    assert any("__1_0.distcp is missing" in w for w in ckpt.warnings)
    infos = {key_of(p): n.tensor for p, n in ckpt.tensors()}
    for key in ("model.w", "model.b", "model.v"):  # a piece in each rank's file
        assert infos[key].problem and "__1_0.distcp" in infos[key].problem
    local = _listing(open_checkpoint(str(two_ranks)))
    for key, (_dtype, _shape, pieces, file) in local.items():  # the other file's read
        if pieces is None:
            assert (infos[key].problem is None) == (file == "__0_0.distcp"), key
    files = {f["path"]: f for f in ckpt.files}
    assert files["__1_0.distcp"].get("problem") == "missing"
    assert scan(ckpt).verdict != "safe"  # a file not scanned


@pytest.mark.skipif(s3server is None, reason="needs s3fs and moto")
def test_a_prefix_url_on_s3_reads_as_the_local_folder(s3server, two_ranks):
    import s3fs

    _server, log, _endpoint = s3server
    fs = s3fs.S3FileSystem(skip_instance_cache=True)
    if not fs.exists(BUCKET):
        fs.makedirs(BUCKET, exist_ok=True)  # other modules use the same server
    for path in two_ranks.iterdir():
        fs.put_file(str(path), f"{BUCKET}/dcp/ckpt/{path.name}")
    forget_filesystems()
    log.seen.clear()
    remote = open_checkpoint(f"s3://{BUCKET}/dcp/ckpt")
    assert remote.format == "dcp"
    assert _listing(remote) == _listing(open_checkpoint(str(two_ranks)))
    r = {key_of(p): n.tensor for p, n in remote.tensors()}
    assert np.array_equal(to_numpy(r["model.w"]), np.arange(35, dtype=np.float32).reshape(7, 5))
    names = _distcp(two_ranks)
    for name in names:  # the open (a HEAD), its end, maybe its start; then model.w's rows
        seen = log.requests(f"dcp/ckpt/{name}")
        assert 1 <= len(seen) <= 5 and all(m in ("HEAD", "GET") for m, _p, _s in seen), seen


def test_a_zstd_compressed_item_is_inflated_over_http(torch, tmp_path):
    pytest.importorskip("zstandard")
    import warnings

    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint import FileSystemWriter
    from torch.distributed.checkpoint._extension import ZStandard

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        dcp.save({"w": torch.arange(4096.0).reshape(64, 64), "step": 5}, no_dist=True,
                 storage_writer=FileSystemWriter(str(tmp_path / "z"), _extensions=[ZStandard()]))
    with RangeServer(tmp_path / "z") as rs:
        ckpt = open_checkpoint(rs.url(".metadata"))
        w = {key_of(p): n.tensor for p, n in ckpt.tensors()}["w"]
        assert w.problem is None
        assert np.array_equal(to_numpy(w), np.arange(4096.0, dtype=np.float32).reshape(64, 64))


@pytest.mark.parametrize("fault", ["forbidden", "dropped"])
def test_a_distcp_that_cannot_be_read_is_never_called_safe(two_ranks, fault):
    """What a file that did not read would run is unknown: the verdict says so (it was
    'safe' while its tensors showed damaged)."""
    from ckpt_inspector.core.scan import scan

    name = "__1_0.distcp"
    with RangeServer(two_ranks) as rs:
        if fault == "forbidden":
            rs.fail_first = {name: [403] * 20}
        else:
            rs.drop_after_bytes = {name: 100}
        try:
            ckpt = open_checkpoint(rs.url(".metadata"))
        except CheckpointError as err:  # the server's failure: the whole open fails
            assert ("access denied" if fault == "forbidden" else "dropped") in str(err)
            return
    report = scan(ckpt)
    assert report.verdict != "safe", (fault, ckpt.warnings)
    assert any(f.file == name for f in report.findings)
