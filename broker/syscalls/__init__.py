"""The syscall table and one module per primitive family. Importing this package fills the
table: every family registers its primitives into `TABLE` at import."""

from broker.syscalls import clock, fs, human, image, net, obj, proc, shell, tool
from broker.syscalls.context import SyscallContext
from broker.syscalls.table import TABLE, FollowUp, SyscallDef, describe

__all__ = ["TABLE", "FollowUp", "SyscallContext", "SyscallDef", "clock", "describe", "fs",
           "human", "image", "net", "obj", "proc", "shell", "tool"]
