"""The comparison tab: its model, its panels and the tab itself."""
