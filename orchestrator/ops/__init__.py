"""The operator surface: :mod:`~orchestrator.ops.service` (``Operations``: list, show, replay,
discard), its pure parts :mod:`~orchestrator.ops.filters` and :mod:`~orchestrator.ops.replay`,
the ``/ops`` routes (:mod:`~orchestrator.ops.http`, ``dashboard``, ``openapi``) and the
``/metrics`` collector (:mod:`~orchestrator.ops.metrics`)."""
