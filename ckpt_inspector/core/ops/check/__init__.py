"""Will ``model.load_state_dict(sd, strict=True)`` accept this checkpoint?

``request`` (what to check: :class:`CheckRequest`, :func:`run_check`), ``state`` (the
checkpoint's state_dict and the target protocol), ``models`` (a model torch builds on the
meta device, and torch's own ``load_state_dict`` run on it), ``emulate`` (another checkpoint
as the model, without torch), ``fixes`` (prefix rules, renames, head size), ``run`` (the
report and each key's status), ``report`` (the result as JSON), ``rows`` (the window's tree).
"""
