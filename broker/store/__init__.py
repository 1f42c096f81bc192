"""Persistence behind one interface (`Store`); SQLite is the embedded default."""

from broker.store.audit import AuditRecord, ChainProblem, StoredRecord, args_hash, verify_chain
from broker.store.interface import Store
from broker.store.sqlite import SQLiteStore

__all__ = ["AuditRecord", "ChainProblem", "SQLiteStore", "Store", "StoredRecord", "args_hash",
           "verify_chain"]
