"""Exports: a checkpoint's tensors as a state_dict or safetensors file, its model as
TorchScript, ONNX or a torch.export program; each staged beside the target, verified,
then moved into place.

- :mod:`.plan`: the part of the file, the tensors and their keys (:class:`KeyRules`)
- :mod:`.pieces`: tensor bytes in pieces, cast between float types
- :mod:`.writers`: ``.pt`` and safetensors written streaming, then verified
- :mod:`.verify`: the checks, and the one save-and-verify sequence of model exports
- :mod:`.model_source`, :mod:`.model`, :mod:`.onnx_model`: model exports
- :mod:`.request`, :mod:`.result`: the typed request and result the command line and the
  window share
"""
