"""The pipeline's Lambda handlers (``handler(event, context)``) and the local runtime.

Each handler module parses its SQS batch and calls :mod:`mlaas4hep.pipeline`; the wiring
(which queue feeds which handler) is declared once, in ``infra/``.
"""
