"""A long read of one file says how far it is and stops when cancelled.

The pickle interpreter reports the megabytes of its stream read (from the size of the
stream, not of the file the member lies in), only for a long stream, and checks the
window's cancel token every few thousand opcodes; a layout of many files reports which
file it reads and keeps each file's own reports out of its bar."""

from __future__ import annotations

import threading
import zipfile

import pytest
import torch

from ckpt_inspector.core.io.cancel import cancellable
from ckpt_inspector.core.ops import session
from ckpt_inspector.core.pickle import vm
from ckpt_inspector.core.progress import Cancelled, Progress

PICKLED = "MB of the pickle read"


@pytest.fixture(scope="module")
def many(tmp_path_factory):
    """A state_dict of 40,000 small tensors: a data.pkl of a few MB in a zip more than twice
    that size (the storages come after the pickle)."""
    path = tmp_path_factory.mktemp("long") / "many.pt"
    torch.save({f"blocks.{i // 8}.w{i % 8}": torch.zeros(4) for i in range(40_000)}, path)
    return path


@pytest.fixture
def eager(monkeypatch):
    """Reports from the first check on, for any stream of 1 MB or more."""
    monkeypatch.setattr(vm, "REPORT_BYTES", 1_000_000)
    monkeypatch.setattr(vm, "REPORT_AFTER", 0.0)
    monkeypatch.setattr(vm, "REPORT_EVERY", 0.0)


def _load(path, cancel=None):
    got: list[Progress] = []
    file = session.load_file(str(path), cancel=cancel, progress=got.append)
    return file, got


def test_a_long_pickle_says_how_many_of_its_megabytes_are_read(many, eager):
    file, got = _load(many)
    read = [p for p in got if p.stage == PICKLED]
    assert len(read) >= 3, got
    with zipfile.ZipFile(many) as z:
        pkl = next(i for i in z.infolist() if i.filename.endswith("/data.pkl")).file_size
    assert pkl >= 2_000_000 and many.stat().st_size > 2 * pkl
    totals = {p.total for p in read}
    assert totals == {pkl // 1_000_000}, totals  # data.pkl, not the archive it lies in
    done = [p.done for p in read]
    assert done == sorted(done) and done[-1] <= pkl // 1_000_000 and done[0] < done[-1]
    stages = [p.stage for p in got]
    assert stages.index("scanning") > stages.index(PICKLED)
    assert file.totals["tensors"] == 40_000


def test_a_short_pickle_says_nothing(tmp_path, monkeypatch):
    monkeypatch.setattr(vm, "REPORT_AFTER", 0.0)  # however long it took
    path = tmp_path / "few.pt"
    torch.save({f"w{i}": torch.zeros(4) for i in range(5_000)}, path)  # 0.5 MB of pickle
    file, got = _load(path)
    assert [p.stage for p in got] == ["scanning", "building the tree"]
    assert file.totals["tensors"] == 5_000


def test_cancel_stops_a_long_local_read(many):
    token = threading.Event()
    token.set()
    with pytest.raises(Cancelled):
        _load(many, cancel=token)


def test_cancel_set_while_reading_stops_it(many, eager):
    token = threading.Event()
    seen: list[Progress] = []

    def progress(p: Progress) -> None:
        seen.append(p)
        if p.stage == PICKLED:
            token.set()  # as the window's Cancel would, from its own thread

    with pytest.raises(Cancelled):
        session.load_file(str(many), cancel=token, progress=progress)
    assert [p.stage for p in seen] == [PICKLED]  # stopped at the next check


def test_the_interpreter_alone_is_cancelled_through_its_context(many):
    token = threading.Event()
    token.set()
    data = many.read_bytes()
    start = data.index(b"\x80\x02")  # data.pkl is the archive's first member
    with cancellable(token), pytest.raises(Cancelled):
        vm.load(data, start)
    vm.load(data, start)  # outside the context: read to its STOP


def test_files_of_a_sharded_model_keep_their_own_reports_out(tmp_path, eager):
    """Shards in torch's format, read one after another: the bar counts files, and no
    shard's megabytes come in between."""
    folder = tmp_path / "sharded"
    folder.mkdir()
    weight_map = {}
    for s in range(2):
        name = f"pytorch_model-0000{s + 1}-of-00002.bin"
        sd = {f"model.layers.{s}.{i}.w": torch.zeros(2) for i in range(12_000)}
        torch.save(sd, folder / name)
        weight_map.update(dict.fromkeys(sd, name))
    import json

    (folder / "pytorch_model.bin.index.json").write_text(
        json.dumps({"metadata": {}, "weight_map": weight_map}))
    file, got = _load(folder)
    assert file.totals["tensors"] == 24_000
    stages = {p.stage for p in got}
    assert "files read" in stages and PICKLED not in stages, stages
    # the same shard opened on its own does report
    _, alone = _load(folder / "pytorch_model-00001-of-00002.bin")
    assert PICKLED in {p.stage for p in alone}


def test_every_stream_checks_the_deadline_and_the_token_at_its_first_opcode():
    """A file of a million tiny pickles is bounded by the one deadline, and stopped by
    Cancel, although none of them reaches the check every few thousand opcodes."""
    import pickle

    from ckpt_inspector.core.errors import PickleError

    tiny = pickle.dumps(1, protocol=2)
    with vm.deadline(-1.0), pytest.raises(PickleError, match="took more than") as err:
        vm.load(tiny)
    assert err.value.limit  # a bound of this reader, not a sign the stream ends
    token = threading.Event()
    token.set()
    with cancellable(token), pytest.raises(Cancelled):
        vm.load(tiny)


def test_a_listener_that_fails_does_not_change_the_read(many, eager):
    import pickle

    from ckpt_inspector.core.progress import reporting

    calls = []

    def broken(p):
        calls.append(p)
        raise ValueError("a listener's bug")

    stream = pickle.dumps([list(range(50)) for _ in range(20_000)], protocol=2)
    with reporting(broken):
        result = vm.load(stream, end_hint=len(stream))
    assert len(calls) == 1 and result.value == pickle.loads(stream)


def test_a_plain_pickle_read_stops_at_cancel(tmp_path):
    """Sniffing the format reads the first bytes with the interpreter: Cancel there is
    Cancel, not 'not this format' (the read would go on to 'not recognised')."""
    import pickle

    path = tmp_path / "plain.pkl"
    path.write_bytes(pickle.dumps({"a": list(range(10))}, protocol=2))
    token = threading.Event()
    token.set()
    with pytest.raises(Cancelled):
        _load(path, cancel=token)
