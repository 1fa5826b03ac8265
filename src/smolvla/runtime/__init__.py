"""Policies beyond PyTorch: export to ONNX (`export`), the torch-free runtime of the exported graphs on
ONNX Runtime or OpenVINO (`exported`), and the choice among backends and precisions (`select`).

The names load lazily, so that `smolvla.runtime.exported` is imported without torch."""

from smolvla import lazy_exports

_EXPORTS = {
    "ExportedPolicy": "smolvla.runtime.exported",
    "ExportedPolicyError": "smolvla.runtime.exported",
    "available_backends": "smolvla.runtime.exported",
    "load_policy": "smolvla.runtime.select",
    "measure": "smolvla.runtime.select",
    "Predictor": "smolvla.runtime.select",
    "export_policy": "smolvla.runtime.export",
    "export_checkpoint": "smolvla.runtime.export",
    "ExportError": "smolvla.runtime.export",
}
__all__ = list(_EXPORTS)
__getattr__ = lazy_exports(__name__, _EXPORTS)
