"""The one serving core every model service runs.

- `spec.py`          TaskSpec: labels, input size, model folder (no heavy imports; training uses it)
- `preprocessing.py` image -> model input (training uses it too)
- `imaging/`         uploaded bytes -> PIL image: inspect (sniffed type, size limits, DICOM routing
                     tags) then decode from that inspection; one module per format
- `errors.py`        domain errors: InvalidImage, UnsupportedMediaType, ModelNotReady
- `runtime.py`       model.onnx in ONNX Runtime, checked against the model file contract
- `batching.py`      calls that arrive while the model is busy share one run
- `heatmap.py`       class activation map -> RGBA PNG overlay
- `service.py`       DiagnosisService (Diagnose, GetModelInfo) for any TaskSpec
- `interceptors.py`  the one place domain errors become gRPC status codes; request metrics
- `server.py`        the model service's lifecycle on the shared gRPC scaffold; `serve`, `start_server`
- `settings.py`      ServingSettings (DRTECH_SERVING_*); ImageLimitSettings, shared with the gateway
- `metrics.py`       Prometheus metrics; `measure.py` times a running service

Plumbing shared with the gateway and auth (gRPC scaffold, logs, mTLS) is in `services/common/`.

A fourth disease is a folder `services/<task>/` with `spec.py` (SPEC = TaskSpec(...)),
`__main__.py` (`serve(SPEC)`) and `model/` (model.onnx, card.json, card.md).
"""
