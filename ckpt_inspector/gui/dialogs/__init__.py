"""Dialogs: help and shortcuts, consent before loading with torch."""
