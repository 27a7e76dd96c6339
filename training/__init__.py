"""TensorFlow/Keras pipelines that train, evaluate and export the shipped models.

Heavy imports (TensorFlow, tf2onnx) stay inside the modules that need them so that
`training.datasets` and `training.splits` import without TensorFlow.
"""
