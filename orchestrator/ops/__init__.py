"""The operator surface: :mod:`~orchestrator.ops.service` (``Operations``: list, show, replay,
discard), its pure parts :mod:`~orchestrator.ops.filters` and :mod:`~orchestrator.ops.replay`,
the ``/ops`` routes (:mod:`~orchestrator.ops.http`: the JSON API; ``dashboard_routes`` and
``dashboard``: the dashboard; ``auth``: tokens, sessions, sign-in throttling; ``surface``: what
both share; ``openapi``) and the ``/metrics`` collectors (:mod:`~orchestrator.ops.metrics`)."""
