"""A file read again leaves nothing behind. Reads pause the cyclic collector and freeze what
survives them (gcpause), so a reference cycle made while reading is never freed: a
window that reopens a file of 100,000 tensors grew by 160 MB each time."""

from __future__ import annotations

import gc
import io
import pickle
import sys
import tarfile
import weakref
import zipfile

import pytest

from ckpt_inspector.core.errors import CheckpointError, PickleError
from ckpt_inspector.core.ops import session
from ckpt_inspector.core.pickle import vm

torch = pytest.importorskip("torch")


def _frozen_after_reads(path, times: int = 3) -> list[int]:
    counts = []
    for _ in range(times):
        try:
            file = session.load_file(str(path))
        except CheckpointError:
            pass  # what could not be read is not kept either
        else:
            session.release_file(file)
            del file
        counts.append(gc.get_freeze_count())
    return counts


def _with_text_records(path, n: int) -> None:
    """A torch.save archive with ``n`` more records tried as pickles and failing."""
    buf = io.BytesIO()
    torch.save({"w": torch.zeros(2)}, buf)
    with zipfile.ZipFile(io.BytesIO(buf.getvalue())) as src, \
            zipfile.ZipFile(path, "w", zipfile.ZIP_STORED) as out:
        for info in src.infolist():
            out.writestr(info, src.read(info))
        for i in range(n):
            out.writestr(f"archive/extra/r{i}", b"just some bytes")


@pytest.mark.parametrize("kind", ["state_dict", "failed_sniffs", "in_a_tar", "truncated"])
def test_reading_a_file_again_leaves_nothing_frozen(tmp_path, kind):
    path = tmp_path / "f.pt"
    if kind == "state_dict":  # an archive and its storage table referred to each other
        torch.save({f"layer{i}.weight": torch.zeros(2) for i in range(2000)}, path)
    elif kind == "failed_sniffs":  # every pickle that failed kept its interpreter's frame
        _with_text_records(path, 2000)
    else:  # a source kept the error it raised, whose frames held the source
        inner = tmp_path / "inner.pt"
        torch.save({f"layer{i}.weight": torch.zeros(2) for i in range(2000)}, inner)
        if kind == "in_a_tar":
            path = tmp_path / "f.tar"
            with tarfile.open(path, "w") as tar:
                tar.add(inner, arcname="model.pt")
        else:
            path.write_bytes(inner.read_bytes()[:-5000])
    first, *later = _frozen_after_reads(path)
    assert all(n - first < 30 for n in later), (first, later)  # 71 to thousands before


def test_a_failed_stream_leaves_no_cycle():
    gc.collect()
    was = gc.isenabled()
    gc.disable()
    try:
        before = len(gc.get_objects())
        for data in (b"just some bytes", b"(", b"\x80\x02K\x01", pickle.dumps([1])[:-1]):
            for _ in range(200):
                with pytest.raises(PickleError):
                    vm.load(data)
        assert len(gc.get_objects()) - before < 50
    finally:
        if was:
            gc.enable()


def test_a_large_value_is_let_go_of_in_steps():
    """What a pickle built (a dict of 100,000 calls) is freed a few thousand items at a time:
    dropped at once, it stalled the window for 50 ms when a tab closed."""
    from ckpt_inspector.core.gcpause import drop_steps

    class Item:
        pass

    items = [Item() for _ in range(5000)]
    alive = [weakref.ref(i) for i in items]
    value = {"state": {i: [item, (i,)] for i, item in enumerate(items)}, "step": 3}
    del items
    steps = drop_steps(value, per=100)
    del value
    for _ in range(10):
        next(steps)
    freed = sum(r() is None for r in alive)
    assert 0 < freed < 5000  # some, not all, after ten steps
    assert sum(1 for _ in steps) > 50
    assert all(r() is None for r in alive)


def test_a_released_file_lets_go_of_its_pickles_values(tmp_path):
    path = tmp_path / "sd.pt"
    torch.save({f"layer{i}.weight": torch.zeros(2) for i in range(500)}, path)
    file = session.load_file(str(path))
    result = file.ckpt.pickles[0].result
    call = next(iter(result.value.values()))  # one tensor's rebuild
    session.release_file(file)
    assert result.value is None and result.calls == []
    alone = object()  # held by one name, as ``call`` should be now
    assert sys.getrefcount(call) == sys.getrefcount(alone)


def test_a_container_held_elsewhere_is_not_emptied():
    """A dict or list something else still holds (a cache, a constant) is left as it is."""
    from ckpt_inspector.core.gcpause import drop_steps

    shared, also = {"a": 1}, [1, 2]
    value = {"x": shared, "y": [also, {"z": 3}]}
    steps = drop_steps(value, per=1)
    del value
    assert sum(1 for _ in steps) > 3
    assert shared == {"a": 1} and also == [1, 2]
