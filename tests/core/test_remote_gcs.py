"""Checkpoints at ``gs://`` URLs, through gcsfs against a fake GCS JSON API on 127.0.0.1
(tests/fakegcs.py), set the way a user points gcsfs at an emulator
(``STORAGE_EMULATOR_HOST``); requests counted from the fake's own log."""

from __future__ import annotations

import json

import numpy as np
import pytest

from ckpt_inspector.core import open_checkpoint
from ckpt_inspector.core.errors import CheckpointError
from ckpt_inspector.core.io import listings
from ckpt_inspector.core.io.remote_fs import describe_error, forget_filesystems
from ckpt_inspector.core.scan import scan
from ckpt_inspector.core.tensors import to_numpy
from ckpt_inspector.core.tree import key_of

from support import payload, run_cli

gcsfs = pytest.importorskip("gcsfs")

MIB = 1 << 20
BUCKET = "ckpts"


pytestmark = pytest.mark.usefixtures("loopback_only")  # tests/conftest.py


@pytest.fixture(scope="module")
def fake(tmp_path_factory):
    """The fake on a free loopback port; this process and the CLI children it starts see
    its address and none of the user's Google configuration."""
    from fakegcs import FakeGCS  # here, alone: it sorts the same as a local or a 3rd party

    nothing = tmp_path_factory.mktemp("gcloud")
    with FakeGCS() as gcs, pytest.MonkeyPatch.context() as mp:
        mp.setenv("STORAGE_EMULATOR_HOST", gcs.endpoint)
        mp.setenv("CLOUDSDK_CONFIG", str(nothing))  # no gcloud login read
        mp.setenv("NO_GCE_CHECK", "true")
        for name in ("GOOGLE_APPLICATION_CREDENTIALS", "FSSPEC_GCS_TOKEN", "FSSPEC_GS_TOKEN"):
            mp.delenv(name, raising=False)
        forget_filesystems()
        try:
            yield gcs
        finally:
            forget_filesystems()


@pytest.fixture(scope="module")
def bucket(fake, tmp_path_factory, torch):
    """A safetensors file, a torch.save zip of 300 tensors, a pickle whose payload would
    create a marker and a sharded model, made here and put in the fake;
    (fake, local folder, tensors, marker)."""
    from safetensors.torch import save_file

    from shards import save_sharded, state_dict

    folder = tmp_path_factory.mktemp("gcs-files")
    gen = torch.Generator().manual_seed(2)
    small = {f"layers.{i}.weight": torch.randn(16, 16, generator=gen) for i in range(40)}
    small["head.weight"] = torch.randn(512, 512, generator=gen)  # 1 MiB
    save_file(small, str(folder / "m.safetensors"))
    many = {f"blocks.{i // 3}.part{i % 3}.weight": torch.randn(1000, generator=gen)
            for i in range(300)}
    torch.save(many, folder / "many.pt")
    marker = folder.parent / "gcs-marker"
    (folder / "evil.pkl").write_bytes(payload(marker))
    for name in ("m.safetensors", "many.pt", "evil.pkl"):
        fake.put(BUCKET, name, (folder / name).read_bytes())
    save_sharded(torch, folder / "model", state_dict(torch), shards=3)
    for p in (folder / "model").iterdir():
        fake.put(BUCKET, f"model/{p.name}", p.read_bytes())
    return fake, folder, {**small, **many}, marker


def url(key: str) -> str:
    return f"gs://{BUCKET}/{key}"


def listing(ckpt):
    return [(key_of(p), n.tensor.dtype, n.tensor.shape) for p, n in ckpt.tensors()]


def fresh():
    """Forget what gcsfs and the folder listings hold, so every open asks again."""
    forget_filesystems()
    listings.forget_all()


@pytest.mark.parametrize("name", ["m.safetensors", "many.pt"])
def test_a_gcs_object_reads_as_the_local_file(bucket, name):
    fake, folder, tensors, _marker = bucket
    fresh()
    fake.clear()
    remote = open_checkpoint(url(name))
    assert listing(remote) == listing(open_checkpoint(str(folder / name)))
    seen = fake.requests()
    assert all(r.status in (200, 206) for r in seen), seen
    # gcsfs's info asks for the object and, at the same time, lists ``name/`` (a folder?);
    # when the listing comes back first, it asks for the object again
    metadata = [r for r in seen if r.route == "object"]
    media = [r for r in seen if r.route == "media"]
    folder_check = [r for r in seen if r.route == "list" and r.query["prefix"] == name + "/"]
    assert 1 <= len(metadata) <= 2 and len(folder_check) <= 1, seen
    assert len(media) + len(metadata) + len(folder_check) == len(seen), seen
    # each read names the generation the metadata gave: a replaced object is not mixed in
    assert all(r.range and r.query.get("generation") for r in media), media
    assert remote.metadata["remote"]["size"] == (folder / name).stat().st_size
    # each one the server saw; the folder check is counted when gcsfs starts it, and it may
    # be cancelled before it is sent when the object's metadata answers first (seen once in
    # CI on a loaded machine)
    counted = remote.metadata["remote"]["requests"]
    assert counted == len(seen) or (counted == len(seen) + 1 and not folder_check), seen
    size = (folder / name).stat().st_size
    if name == "m.safetensors":
        assert len(media) <= 2, seen  # the end, the header
    else:  # the structure of a zip of 300 tensors, not the file
        assert len(seen) <= 8, seen
        assert fake.bytes_sent() <= 2 * MIB and fake.bytes_sent() < size // 2, seen
    key = "head.weight" if name == "m.safetensors" else "blocks.7.part1.weight"
    node = {key_of(p): n for p, n in remote.tensors()}[key]
    before = fake.bytes_sent()
    assert np.array_equal(to_numpy(node.tensor), tensors[key].numpy())
    after = fake.requests()[len(seen):]
    assert after and all(r.route == "media" and r.status == 206 for r in after), after
    assert fake.bytes_sent() - before <= node.tensor.nbytes + 2 * MIB


def test_a_pickle_that_would_run_code_is_dangerous_and_never_runs(bucket):
    _fake, _folder, _tensors, marker = bucket
    assert scan(open_checkpoint(url("evil.pkl"))).verdict == "dangerous"
    proc = run_cli("scan", url("evil.pkl"))
    assert proc.returncode != 0 and "dangerous" in proc.stdout.lower(), proc.stderr
    assert not marker.exists()


def test_the_cli_reads_gcs_at_the_emulator_a_user_sets(bucket):
    fake = bucket[0]
    fake.clear()
    proc = run_cli("info", "--json", url("many.pt"), env={"STORAGE_EMULATOR_HOST": fake.endpoint})
    assert proc.returncode == 0, proc.stderr
    doc = json.loads(proc.stdout)
    assert len(doc["tensors"]) == 300 and doc["metadata"]["remote"]["requests"] <= 8
    assert len(fake.requests()) <= 8, fake.requests()
    # the host without its scheme, as gcloud's emulators print it, works too
    host = fake.endpoint.removeprefix("http://")
    proc = run_cli("info", url("m.safetensors"), env={"STORAGE_EMULATOR_HOST": host})
    assert proc.returncode == 0, proc.stderr


def test_a_sharded_model_at_a_prefix_reads_as_the_local_folder(bucket):
    fake, folder, _tensors, _marker = bucket
    fresh()
    fake.clear()
    ckpt = open_checkpoint(url("model"))
    local = open_checkpoint(str(folder / "model"))
    assert ckpt.format == local.format == "hf-sharded"
    assert listing(ckpt) == listing(local)
    shards = [p.name for p in (folder / "model").iterdir() if p.suffix == ".safetensors"]
    media = fake.requests(route="media")
    assert len(fake.requests(route="list")) <= 2, fake.requests()
    assert len(media) <= 2 + 2 * len(shards), fake.requests()  # index, config, 1-2 a shard


@pytest.mark.parametrize("where", [url("nothing.pt"), "gs://no-such-bucket/m.pt"])
def test_a_missing_object_is_one_line_and_exit_3(bucket, where):
    proc = run_cli("info", where)
    assert proc.returncode == 3 and "no such file" in proc.stderr, proc.stderr
    assert "Traceback" not in proc.stderr and len(proc.stderr.strip().splitlines()) == 1


def test_a_refusal_names_google_credentials(bucket):
    fake = bucket[0]
    fresh()
    fake.denied.add(BUCKET)
    try:
        with pytest.raises(CheckpointError, match=r"access denied.*Google credentials"):
            open_checkpoint(url("m.safetensors"))
        proc = run_cli("info", url("m.safetensors"))
        assert fake.requests(route="denied")
    finally:
        fake.denied.clear()
    assert proc.returncode == 3 and "Google credentials" in proc.stderr, proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1
    assert "Google credentials" in describe_error(OSError("Forbidden: x"), "gcs://b/k")


def test_an_object_replaced_while_read_fails_in_one_line(bucket):
    fake, folder, _tensors, _marker = bucket
    fake.put(BUCKET, "changing.safetensors", (folder / "m.safetensors").read_bytes())
    fresh()
    ckpt = open_checkpoint(url("changing.safetensors"))
    node = {key_of(p): n for p, n in ckpt.tensors()}["head.weight"]
    fake.put(BUCKET, "changing.safetensors", (folder / "m.safetensors").read_bytes())
    with pytest.raises(CheckpointError, match="changed"):
        to_numpy(node.tensor)


def test_a_transient_failure_is_tried_again_a_few_times_not_gcsfs_six(bucket):
    """gcsfs alone tries each request six times over about 35 seconds (a minute where
    nothing answers); here a failure is tried again by ckpt-inspector's own few tries."""
    fake = bucket[0]
    fresh()
    fake.clear()
    fake.fail_first = {f"{BUCKET}/m.safetensors": [503, 500]}
    try:
        ckpt = open_checkpoint(url("m.safetensors"))
    finally:
        fake.fail_first = {}
    assert len(list(ckpt.tensors())) == 41
    failed = [r for r in fake.requests() if r.status >= 500]
    assert len(failed) == 2, fake.requests()
    fresh()
    fake.clear()
    fake.fail_first = {f"{BUCKET}/m.safetensors": [503] * 40}
    try:
        proc = run_cli("info", url("m.safetensors"))
    finally:
        fake.fail_first = {}
    assert proc.returncode == 3 and len(proc.stderr.strip().splitlines()) == 1, proc.stderr
    tries = [r for r in fake.requests() if r.route == "object"]
    # the first try and three more, each one or two object requests (gcsfs's info asks
    # again when its folder check answers first): not gcsfs's 6 a request, times 4
    assert 1 < len(tries) <= 8, fake.requests()


def test_no_server_at_the_emulator_address_fails_at_once(tmp_path):
    import socket

    with socket.socket() as s:  # a port nothing listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    proc = run_cli("info", url("m.safetensors"),
                   env={"STORAGE_EMULATOR_HOST": f"http://127.0.0.1:{port}"})
    assert proc.returncode == 3 and "cannot connect" in proc.stderr, proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1
