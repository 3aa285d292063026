"""The bound on the pickles a file holds besides its checkpoint's own: the records of an
archive (and of the archives inside it) tried as pickles, in number and within the time
limit every pickle of the file shares. A record left unread could hold anything, so the
rest are refused as dangerous, as a stream past one of the interpreter's limits is; a
million tiny pickles is an attack on the reader, not a checkpoint."""

from __future__ import annotations

import contextlib
import contextvars
from collections.abc import Iterator

from ckpt_inspector.core.errors import PickleError
from ckpt_inspector.core.findings import DANGEROUS, Finding
from ckpt_inspector.core.io.cancel import check_cancelled
from ckpt_inspector.core.pickle import vm as pickle_vm

# torch writes no other pickle; TorchScript a few, an archive of checkpoints one a member
MAX_MEMBER_PICKLES = 10_000


MAX_ARRAY_BYTES = 512 << 20


class PickleQuota:
    def __init__(self) -> None:
        self.read = 0
        # bytes of object arrays numpy.load would unpickle, read for the whole file (its
        # nested archives share them: each had its own 1 GiB, and 5 of them took 4.5 GB)
        self.arrays_left = MAX_ARRAY_BYTES
        self.why: str | None = None
        self.left: list[str] = []

    def allows(self, name: str) -> bool:
        """Whether record ``name`` may be read (Cancel stops the loop here); one that may
        is counted by the caller (``read``) once it is read as a pickle."""
        check_cancelled()
        if self.why is None:
            if self.read >= MAX_MEMBER_PICKLES:
                self.why = f"more than {MAX_MEMBER_PICKLES:,} of them are pickles"
            elif pickle_vm.past_deadline():
                self.late(None)
        if self.why is not None:
            self.left.append(name)
            return False
        return True

    def late(self, name: str | None) -> None:
        """The time limit ran out (``name``: while that record was being tried)."""
        self.why = self.why or (f"reading the file's pickles took more than "
                                f"{pickle_vm.MAX_SECONDS:.0f} s")
        if name is not None:
            self.left.append(name)

    def report(self, findings: list[Finding], where: str | None) -> None:
        """The records refused since the last call, as one finding (each archive reports
        its own)."""
        if not self.left:
            return
        left, self.left = self.left, []
        more = f" and {len(left) - 3:,} more" if len(left) > 3 else ""
        findings.append(Finding(
            DANGEROUS, "unread-member",
            f"{', '.join(left[:3])}{more} were not read: {self.why}, so the archive is "
            "refused; what those records hold is not known", where))


def ran_out(err: PickleError) -> bool:
    """Whether trying a record as a pickle stopped because the file's time ran out (the
    record was not tried, so it is not 'not a pickle')."""
    return err.limit and pickle_vm.past_deadline()


_CURRENT: contextvars.ContextVar[PickleQuota | None] = contextvars.ContextVar(
    "member_pickles", default=None)


@contextlib.contextmanager
def per_file() -> Iterator[None]:
    """One quota for every archive read inside the block (a file and what it nests)."""
    token = _CURRENT.set(PickleQuota()) if _CURRENT.get() is None else None
    try:
        yield
    finally:
        if token is not None:
            _CURRENT.reset(token)


def current() -> PickleQuota:
    """The file's quota; outside :func:`per_file`, one for the caller alone."""
    return _CURRENT.get() or PickleQuota()
