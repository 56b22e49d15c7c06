"""Measuring models, whatever the task: label metrics and calibration (``metrics``), model size
and latency (``bench``), Grad-CAM (``cam``). Task-specific metrics live in their task folder
(``detection.metrics``, ``segmentation.metrics``)."""
