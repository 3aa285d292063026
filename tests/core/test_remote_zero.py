"""DeepSpeed ZeRO checkpoints at a URL (``core/layouts/deepspeed``, ``_deepspeed_files``):
over plain HTTP by the URL of the root's ``latest`` or of rank 0's model states file (no
listing: the other files are found from what that file says, a 404 meaning absent), over
S3 by the root's prefix; every file's pickles interpreted as locally, the rank files read
concurrently, the flat fp32 partitions fetched by range; requests counted from the log."""

from __future__ import annotations

import shutil

import numpy as np
import pytest
import zero_files

from ckpt_inspector.core import open_checkpoint
from ckpt_inspector.core.io.remote_fs import forget_filesystems
from ckpt_inspector.core.scan import scan
from ckpt_inspector.core.tensors import to_numpy
from ckpt_inspector.core.tree import key_of

from rangeserver import RangeServer

try:  # moto's S3 server and its request log, as the S3 tests set them up
    from test_remote_s3 import BUCKET, s3server  # s3server: a fixture
except pytest.skip.Exception:
    s3server = None

TAG = zero_files.TAG
CASES = [(2, 3), (3, 2)]  # stage 2 over 3 ranks (fp32); stage 3 over 2 ranks (bf16_ files)


pytestmark = pytest.mark.usefixtures("loopback_only")  # tests/conftest.py


@pytest.fixture(scope="module")
def made(torch, tmp_path_factory):
    root = tmp_path_factory.mktemp("zero-remote")
    return {(s, w): zero_files.save(torch, root / f"z{s}w{w}", s, w,
                                    half=torch.bfloat16 if w == 2 else None)
            for s, w in CASES}


def _listing(ckpt):
    return {key_of(p): (n.tensor.dtype, tuple(n.tensor.shape), n.tensor.pieces, n.tensor.file,
                        n.tensor.problem) for p, n in ckpt.tensors()}


def _model(ckpt):
    return {str(n.key): n.tensor for n in ckpt.root.children if n.kind == "tensor"}


def _states(stage):
    return "mp_rank_00_model_states.pt" if stage < 3 else \
        "zero_pp_rank_0_mp_rank_00_model_states.pt"


@pytest.mark.parametrize("stage,world", CASES)
def test_latest_url_reads_as_the_local_folder(made, stage, world):
    root = made[(stage, world)]
    local = open_checkpoint(str(root))
    with RangeServer(root) as rs:
        remote = open_checkpoint(rs.url("latest"))
        log = rs.requests()
    assert remote.format == local.format == "deepspeed-zero"
    assert _listing(remote) == _listing(local)
    assert {f["path"]: f["size"] for f in remote.files} == \
        {f["path"]: f["size"] for f in local.files}
    assert not remote.warnings and remote.metadata["world size"] == world
    assert scan(remote).verdict == scan(local).verdict
    # latest once, each rank file in one ranged request (its end holds all of these small
    # files); at stage 3 one 404 first, for the stages 1-2 name latest does not rule out
    files = [f["path"] for f in local.files]
    assert len(log) == len(files) + (stage == 3), log
    assert all(r.range for r in log)
    for path in files:
        assert len([r for r in log if r.path == path]) == 1, path
    assert [r.path for r in log if r.status == 404] == \
        ([f"{TAG}/mp_rank_00_model_states.pt"] if stage == 3 else [])
    assert remote.metadata["remote"]["requests"] == len(files)


@pytest.mark.parametrize("stage,world", CASES)
def test_model_states_url_reads_as_the_local_tag_folder(made, stage, world):
    root = made[(stage, world)]
    local = open_checkpoint(str(root / TAG))
    with RangeServer(root) as rs:
        remote = open_checkpoint(rs.url(f"{TAG}/{_states(stage)}"))
        log = rs.requests()
    assert _listing(remote) == _listing(local)
    assert remote.metadata["tag"] == TAG
    assert len(log) == len(local.files) and all(r.status == 206 for r in log)


def test_a_rebuilt_fp32_tensor_fetches_its_pieces_by_range(made, torch):
    root = made[(2, 3)]
    local = _model(open_checkpoint(str(root)))
    with RangeServer(root) as rs:
        remote = _model(open_checkpoint(rs.url("latest")))
        rs.clear()
        # a parameter straddling two ranks' partitions
        info = next(i for i in remote.values()
                    if i.pieces and len({p["file"] for p in i.pieces}) > 1)
        key = next(k for k, v in remote.items() if v is info)
        assert np.array_equal(to_numpy(info), to_numpy(local[key]))
        log = rs.requests()
        for k in ("embed.weight", "layer.weight", "layer.bias", "head.weight", "head.bias"):
            assert np.array_equal(to_numpy(remote[k]), to_numpy(local[k])), k
        everything = rs.requests()
    want = zero_files.model_weights(torch)[key].numpy()
    assert np.array_equal(to_numpy(info), want)
    # one ranged request per piece (the structure is cached), never a whole file
    assert len(log) == len(info.pieces) and all(r.range and r.status == 206 for r in log)
    assert sum(r.sent for r in log) == info.nbytes
    assert all(r.range for r in everything)


def test_a_payload_in_an_optim_states_file_is_dangerous_over_http(made, torch, tmp_path):
    from support import Payload

    root = tmp_path / "evil"
    shutil.copytree(made[(2, 3)], root)
    marker = tmp_path / "marker"
    target = root / TAG / "zero_pp_rank_1_mp_rank_00_optim_states.pt"
    with zero_files.deepspeed_names():
        saved = torch.load(target, weights_only=False)  # our own file: trusted here
        saved["optimizer_state_dict"]["client"] = Payload(f"touch {marker}")
        torch.save(saved, target)
    with RangeServer(root) as rs:
        ckpt = open_checkpoint(rs.url("latest"))
    report = scan(ckpt)
    assert report.verdict == "dangerous"
    bad = {f.file for f in report.findings if f.severity == "dangerous"}
    assert bad == {f"{TAG}/{target.name}"}
    assert all(i.problem is None for i in _model(ckpt).values())
    assert not marker.exists()


@pytest.mark.parametrize("stage", [2, 3])
def test_a_missing_rank_file_marks_its_tensors_damaged(made, tmp_path, stage):
    world = 3 if stage == 2 else 2
    root = tmp_path / "broken"
    shutil.copytree(made[(stage, world)], root)
    prefix = "bf16_" if world == 2 else ""
    lost = root / TAG / f"{prefix}zero_pp_rank_1_mp_rank_00_optim_states.pt"
    lost.unlink()
    rel = f"{TAG}/{lost.name}"
    local = open_checkpoint(str(root))
    with RangeServer(root) as rs:
        ckpt = open_checkpoint(rs.url("latest"))
        assert len(rs.requests(rel)) == 1  # its 404, asked once
    assert any(f"{rel} is missing" in w for w in ckpt.warnings)
    model = _model(ckpt)
    damaged = {k for k, i in model.items() if i.problem}
    assert damaged and all(rel in model[k].problem for k in damaged)
    assert damaged == {k for k, i in _model(local).items() if i.problem}
    assert _listing(ckpt) == _listing(local)
    files = {f["path"]: f for f in ckpt.files}
    assert files[rel].get("problem") == "missing"
    assert scan(ckpt).verdict != "safe"  # a file not scanned


def test_latest_naming_no_tag_with_files_is_one_clear_error(made, tmp_path):
    from ckpt_inspector.core.errors import CheckpointError

    (tmp_path / "latest").write_text("global_step9")
    with RangeServer(tmp_path) as rs, pytest.raises(CheckpointError, match="global_step9"):
        open_checkpoint(rs.url("latest"))


@pytest.mark.skipif(s3server is None, reason="needs s3fs and moto")
def test_a_prefix_url_on_s3_reads_as_the_local_folder(s3server, made, torch):
    import s3fs

    _server, log, _endpoint = s3server
    root = made[(3, 2)]
    fs = s3fs.S3FileSystem(skip_instance_cache=True)
    if not fs.exists(BUCKET):
        fs.makedirs(BUCKET, exist_ok=True)  # other modules use the same server
    for path in root.rglob("*"):
        if path.is_file():
            fs.put_file(str(path), f"{BUCKET}/zero/run/{path.relative_to(root).as_posix()}")
    forget_filesystems()
    log.seen.clear()
    remote = open_checkpoint(f"s3://{BUCKET}/zero/run")
    local = open_checkpoint(str(root))
    assert remote.format == "deepspeed-zero"
    assert _listing(remote) == _listing(local)
    got = _model(remote)["layer.weight"]
    assert np.array_equal(to_numpy(got), zero_files.model_weights(torch)["layer.weight"].numpy())
    for f in local.files:  # each file: a HEAD, its end; then layer.weight's pieces
        seen = log.requests(f"zero/run/{f['path']}")
        assert 1 <= len(seen) <= 4 and all(m in ("HEAD", "GET") for m, _p, _s in seen), seen
    # the tag folder's URL and latest's URL read the same
    assert _listing(open_checkpoint(f"s3://{BUCKET}/zero/run/latest")) == _listing(local)
