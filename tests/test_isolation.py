"""The test session keeps out of the user's real config and cache folders."""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
from pathlib import Path


def test_config_and_cache_folders_are_the_sessions_own():
    temp = Path(tempfile.gettempdir()).resolve()
    for name in ("XDG_CONFIG_HOME", "XDG_CACHE_HOME", "XDG_DATA_HOME"):
        assert temp in Path(os.environ[name]).resolve().parents, name


def test_qt_in_a_child_writes_its_settings_in_the_sessions_folders():
    code = ("from PySide6.QtCore import QStandardPaths as P, QCoreApplication\n"
            "app = QCoreApplication(['ckpt-inspector'])\n"
            "print(P.writableLocation(P.StandardLocation.GenericConfigLocation))\n"
            "print(P.writableLocation(P.StandardLocation.GenericCacheLocation))\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True, timeout=60).stdout.split()
    assert out == [os.environ["XDG_CONFIG_HOME"], os.environ["XDG_CACHE_HOME"]]


def test_the_demo_cache_is_the_sessions():
    from ckpt_inspector import demo

    temp = Path(tempfile.gettempdir()).resolve()
    assert temp in demo.cache_dir().resolve().parents
