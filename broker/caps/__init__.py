"""Capabilities: resources, rights, per-process handle tables, attenuation, proofs."""

from broker.caps.capability import RIGHTS, Capability, CapSpec
from broker.caps.paths import FileId, VirtualPath, normalize
from broker.caps.proof import CheckedPath, Proof, host_path, require_proof
from broker.caps.registry import CapabilityRegistry
from broker.caps.table import CapabilityTable, Decision, NeedsApproval

__all__ = [
    "RIGHTS",
    "CapSpec",
    "Capability",
    "CapabilityRegistry",
    "CapabilityTable",
    "CheckedPath",
    "Decision",
    "FileId",
    "NeedsApproval",
    "Proof",
    "VirtualPath",
    "host_path",
    "normalize",
    "require_proof",
]
