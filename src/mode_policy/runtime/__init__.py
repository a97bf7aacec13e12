"""Deployment: a policy's action chunk exported to ONNX (fp32, int8) and run by ONNX Runtime (``OnnxPolicy``).

``export_onnx`` needs onnx, onnxscript and onnxruntime; ``OnnxPolicy`` needs onnxruntime alone
(``pip install 'mode-policy[deploy]'``).
"""

from mode_policy.lazy import lazy_exports

_EXPORTS = {
    "ExportReport": "mode_policy.runtime.export",
    "OnnxPolicy": "mode_policy.runtime.onnx_policy",
    "export_onnx": "mode_policy.runtime.export",
}
__all__ = sorted(_EXPORTS)
__getattr__ = lazy_exports(globals(), _EXPORTS)
