"""Moved to :mod:`ckpt_inspector.core.ops.session`; this name stays only for
``gui/export_dialog.py`` until it imports the new one."""

from ckpt_inspector.core.ops.session import LoadedFile, load_file, release_file

__all__ = ["LoadedFile", "load_file", "release_file"]
