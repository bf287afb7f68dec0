"""The clock (:mod:`orchestrator.maintenance.clock`) and its periodic tasks.

Each task is an object with a ``name``, ``run_once() -> int`` (how many things it acted on)
and ``preview() -> int`` (how many it would act on now, for ``--dry-run``), built from what
it uses: the store, the dispatcher, the settings. The plain sweeps are rows of a table
(:mod:`~orchestrator.maintenance.sweeps`); lease expiry and dramatiq's dead letters have a
module each.
"""

# Rows one pass touches per task, so a huge backlog is worked through in bounded slices.
BATCH_LIMIT = 500
