"""The source for what a user names: a local path, or a URL (``https://``, ``s3://``,
``gs://``, ``hf://``; :mod:`~ckpt_inspector.core.io.remote` and fsspec are imported only
for a URL, so a local open pays nothing for them)."""

from __future__ import annotations

import os

from ckpt_inspector.core.io.source import LocalSource, Source
from ckpt_inspector.core.io.urls import is_url

__all__ = ["is_url", "open_source"]


def open_source(path: str | os.PathLike[str]) -> Source:
    if is_url(path):
        from ckpt_inspector.core.io.remote import RemoteSource

        return RemoteSource(os.fspath(path))
    return LocalSource(path)
