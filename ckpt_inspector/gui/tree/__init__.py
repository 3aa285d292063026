"""The checkpoint tab: its key tree (model, view helpers) and the tab itself."""
