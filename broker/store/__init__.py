"""Persistence behind one interface; SQLite is the embedded default."""

from broker.store.audit import AuditRecord, ChainProblem, StoredRecord, args_hash, verify_chain
from broker.store.sqlite import SQLiteStore

__all__ = ["AuditRecord", "ChainProblem", "SQLiteStore", "StoredRecord", "args_hash",
           "verify_chain"]
