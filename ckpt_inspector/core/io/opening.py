"""The source for what a user names: a local path, or a URL (``https://``, ``s3://``,
``gs://``, ``hf://``; :mod:`~ckpt_inspector.core.io.remote` and fsspec are imported only
for a URL, so a local open pays nothing for them)."""

from __future__ import annotations

import os

from ckpt_inspector.core.io.source import LocalSource, Source


def open_source(path: str | os.PathLike[str]) -> Source:
    if is_url(path):
        from ckpt_inspector.core.io.remote import RemoteSource

        return RemoteSource(os.fspath(path))
    return LocalSource(path)


def is_url(path: object) -> bool:
    """``scheme://…`` (a Windows path such as ``C:\\x`` has no ``//``)."""
    if not isinstance(path, str):
        return False
    scheme, sep, _rest = path.partition("://")
    return bool(sep) and scheme.isascii() and scheme[:1].isalpha() and \
        all(c.isalnum() or c in "+.-" for c in scheme)
