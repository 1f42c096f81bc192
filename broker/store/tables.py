"""Every group of tables a store keeps, one mixin each, put together once: both backends
(`sqlite.SQLiteStore`, `postgres.PostgresStore`) are this over their own connection, so a
mixin added here is on both."""

from __future__ import annotations

from broker.store.approvals import ApprovalTables
from broker.store.grants import GrantRecords
from broker.store.labels import LabelTables
from broker.store.leases import LeaseTable
from broker.store.objects import ObjectTables
from broker.store.switch import ImageSwitch
from broker.store.tools import ToolTables


class StoreTables(ApprovalTables, GrantRecords, ToolTables, ObjectTables, ImageSwitch,
                  LeaseTable, LabelTables):
    """The audit chain (records may be deferred to the next transaction), approvals, processes
    and capabilities (with grants recorded), tools, Object Memory, durable state and
    checkpoints, image switches, leases and labels."""
