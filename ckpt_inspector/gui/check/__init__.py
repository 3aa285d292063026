"""The check tab: a checkpoint against a model, its model and the tab itself."""
