"""Razorpay: the registry entry (``spec.py``, :data:`SPEC`), the provider (``provider.py``),
the objects it sends and what answers mean (``objects.py``), failures as outcomes
(``errors.py``), its HTTP transport under the SDK (``transport.py``), its settings
(``settings.py``) and webhooks (``webhooks.py``).

Importing this package names the provider without importing the SDK: ``provider.py`` (and
``razorpay``) is imported when the provider is built.
"""

from orchestrator.providers.razorpay.spec import SPEC

__all__ = ["SPEC"]
