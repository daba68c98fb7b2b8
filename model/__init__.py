"""Offline tier: data readers, glance and user encoders, FM-Lite training and export.

Entry point: ``model.pipeline.run_pipeline(PipelineConfig(...))``. Modules import TensorFlow
only where they build, train or export the model (``fmlite_model``, ``train``, ``export``,
``pipeline``), so the readers, the encoders and ``dataset.load_test_day`` work without it.
This package imports no server code.
"""

__all__: list[str] = []
