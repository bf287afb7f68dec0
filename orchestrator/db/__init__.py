"""PostgreSQL: the only package that executes SQL (pool.py, store.py, ops.py)."""

from orchestrator.db.ops import OpsStore
from orchestrator.db.pool import Conn, Row, connect, make_pool, migrate
from orchestrator.db.store import Settled, Store

__all__ = ["Conn", "OpsStore", "Row", "Settled", "Store", "connect", "make_pool", "migrate"]
