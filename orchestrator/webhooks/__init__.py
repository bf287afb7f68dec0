"""Provider webhooks: verified, stored once, answered fast, processed in the background.

* :mod:`orchestrator.webhooks.ingest`: reading the body, storing the event once, sending its
  processing message; the HTTP endpoint, given a provider's ``verify``;
* :mod:`orchestrator.webhooks.process`: claiming a stored event, applying what it means to
  its job, finishing or releasing the row;
* :mod:`orchestrator.webhooks.listing`: stored events, for operators;
* :mod:`orchestrator.webhooks.events`: what they pass around;
* :mod:`orchestrator.providers.stripe.webhooks`: Stripe's signatures, event shapes and
  what its events mean.

The clock's sweep of events whose message was lost is the ``webhooks_redispatched`` task of
:func:`orchestrator.maintenance.clock.default_tasks`.

This file imports nothing: a provider's module imports the neutral submodules, and a package
that imported the provider back would make a cycle. Import from the submodules.
"""
