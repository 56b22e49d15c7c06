"""Deployment: exporting a trained model to other runtimes (``export``) and running, checking and
timing the exported files (``runtime``)."""
