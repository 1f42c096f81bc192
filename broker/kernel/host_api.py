"""The host's own hands (part of the embedding API, mixed into `Kernel`): seeding and reading
objects and files, and ending a process the host drives with a status.

The host is the root of authority, so no capability is checked; everything else is as for a
process. Arguments are validated by the same syscall schemas (`obj.put`, `fs.write`, ...), an
object's value must meet its type, a path is resolved inside the fs root by the provider (a
symlink leading out is still `NotCapable`) and reaches it only as a proof (`host_path`).
Each act is a record in the chain (`host_acts`): written after the checks and before the act
takes effect; a refused or failed one is recorded as `rejected` with its typed error.
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any

from broker.caps import CheckedPath, VirtualPath, host_path, normalize
from broker.errors import Conflict, InvalidArgument
from broker.json_text import utf8
from broker.kernel import too_deep
from broker.kernel.host_acts import host_record, refused, sha256, value_digest
from broker.syscalls import TABLE

if TYPE_CHECKING:
    from broker.kernel.images import Images
    from broker.kernel.process import AgentProcess
    from broker.providers.fs import FsProvider
    from broker.store import SQLiteStore

EXIT_CODES = range(-(2**31), 2**31)


def _plain(value: Any) -> None:
    try:
        json.dumps(value, allow_nan=False)
    except (TypeError, ValueError) as exc:
        raise InvalidArgument(f"an object's value must be plain JSON data: {exc}") from None


class HostAPI:
    if TYPE_CHECKING:  # what the kernel this is mixed into has
        store: SQLiteStore
        fs: FsProvider
        images: Images

        def process(self, pid: int) -> AgentProcess: ...
        def require_live(self, proc: AgentProcess) -> None: ...
        def finish(self, proc: AgentProcess, code: int, result: Any) -> None: ...
        def status(self, proc: AgentProcess) -> dict[str, Any]: ...

    # -- objects ---------------------------------------------------------------------------------

    def put_object(self, name: str, value: Any, *, ns: str, type: str = "json",
                   expect_version: int | None = None) -> dict[str, Any]:
        """Store a new version of an object in namespace `ns` (a process's own is
        `proc/<pid>`); with `expect_version`, only if that is the current one (else
        `Conflict`). Returns {ns, name, version}."""
        with refused(self.store, "host.obj.put", resource=ns, name=name, type=type):
            args: dict[str, Any] = {"ns": ns, "name": name, "type": type, "value": value}
            if expect_version is not None:
                args["expect_version"] = expect_version
            TABLE["obj.put"].check_args(args)
            too_deep.refuse_unplain(value, "the object's value")
            _plain(value)
            self.images.object_schema_check(type, value)
            self.store.append_audit(host_record(
                "host.obj.put", resource=ns, name=name, type=type, value=value_digest(value),
                expect_version=expect_version))
            version = self.store.put_object(ns, name, type, value, pid=None,
                                            expect_version=expect_version)
        return {"ns": ns, "name": name, "version": version}

    def get_object(self, name: str, *, ns: str, version: int | None = None) -> dict[str, Any]:
        """Read an object (its newest version unless `version` is given): {ns, name,
        version, type, value}."""
        with refused(self.store, "host.obj.get", resource=ns, name=name, version=version):
            args: dict[str, Any] = {"ns": ns, "name": name}
            if version is not None:
                args["version"] = version
            TABLE["obj.get"].check_args(args)
            self.store.append_audit(host_record("host.obj.get", resource=ns, name=name,
                                                version=version))
            row = self.store.get_object(ns, name, version)
        return {"ns": row["ns"], "name": row["name"], "version": row["version"],
                "type": row["type"], "value": row["payload"]}

    # -- files -----------------------------------------------------------------------------------

    def write_file(self, path: str, data: str | bytes, *, append: bool = False,
                   parents: bool = False) -> int:
        """Write a file of the fs tree (text as UTF-8), replacing it unless `append`; with
        `parents`, make its missing directories. Returns the bytes written."""
        with refused(self.store, "host.fs.write", resource=path, append=append):
            TABLE["fs.write"].check_args({"path": path, "data": data, "append": append})
            if isinstance(data, str):
                if not utf8(data):
                    raise InvalidArgument("data holds text that is not Unicode (a lone "
                                          "surrogate)")
                data = data.encode()
            if not isinstance(data, bytes | bytearray | memoryview):
                raise InvalidArgument("data must be a string or bytes")
            data = bytes(data)
            resolved = self.fs.resolve(normalize(path))
            if resolved.want_dir or not resolved.parts:
                raise InvalidArgument(f"{path!r} names a directory, not a file")
            self._host_file("write", resolved)  # refused before anything is recorded as done
            self.store.append_audit(host_record(
                "host.fs.write", resource=resolved.text, append=append, parents=parents,
                bytes=len(data), sha256=sha256(data)))
            if parents and len(resolved.parts) > 1:
                parent = VirtualPath(resolved.parts[:-1])
                self.fs.mkdir(host_path("write", parent, self.fs.identify(parent)), parents=True)
            return self.fs.write(self._host_file("write", resolved), data, append=append,
                                 exclusive=False)

    def _host_file(self, right: str, resolved: VirtualPath) -> CheckedPath:
        """The host's proof for a file, never one with another name (a hard link a process
        may have planted to a file that is not the host's)."""
        found = self.fs.identify(resolved)
        if found is not None and found.names > 1:
            raise Conflict(f"{resolved.text!r} is a file with {found.names} names (a hard "
                           "link): the host does not read or write through one")
        return host_path(right, resolved, found)

    def read_file(self, path: str, *, binary: bool = False) -> str | bytes:
        """Read a file of the fs tree: text (UTF-8) unless `binary`."""
        with refused(self.store, "host.fs.read", resource=path, binary=binary):
            TABLE["fs.read"].check_args({"path": path, "binary": binary})
            resolved = self.fs.resolve(normalize(path))
            if resolved.want_dir or not resolved.parts:
                raise InvalidArgument(f"{path!r} names a directory, not a file")
            self._host_file("read", resolved)
            self.store.append_audit(host_record("host.fs.read", resource=resolved.text,
                                                binary=binary))
            data = self.fs.read(self._host_file("read", resolved), 0, None)
            if binary:
                return data
            try:
                return data.decode()
            except UnicodeDecodeError:
                raise InvalidArgument(f"{path!r} is not UTF-8 text; read it with binary=True"
                                      ) from None

    # -- ending a host-driven process ------------------------------------------------------------

    def exit(self, pid: int, code: int = 0, result: Any = None) -> dict[str, Any]:
        """End a process the host drives (one without a running planner) with an exit code
        and a result, as a planner's `Exit` would; `wait` and `libos ps` then show them.
        Returns its final status."""
        with refused(self.store, "host.exit", pid=pid, resource=pid, code=code):
            if isinstance(code, bool) or not isinstance(code, int) or code not in EXIT_CODES:
                raise InvalidArgument("an exit code is a 32-bit integer")
            too_deep.refuse_unplain(result, "the exit result")
            proc = self.process(pid)
            self.require_live(proc)
            if proc.scope is not None and not proc.done.is_set():
                raise Conflict(f"process {pid} is driven by its planner: kill it instead")
            self.store.append_audit(host_record("host.exit", pid=pid, resource=pid, code=code,
                                                result=result))
            self.finish(proc, code, result)
        return self.status(proc)
