"""The PySide6 desktop app: adapters over the Qt-free core, no checkpoint logic."""
