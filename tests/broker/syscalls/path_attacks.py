"""The path-attack corpus (issue 14, item 8): attempts to reach a file a process may not touch,
through every fs syscall, and the one runner that plays them through one kernel.

A process may read and write `/work/pub/**` except `/work/pub/private/**` (a deny rule); its
cwd is `/work/pub`. Beside it lie what it must never reach: `/work/secret/key` (inside the
broker's tree, outside the scope), `/work/pub/private/key` (denied), `/etc/passwd` (a file of
the tree outside the scope) and, outside the broker's tree altogether, a host directory.
A second process has `/work/pub` as its root.

Each attempt names its syscall, arguments and the typed error it must end in. The runner
checks, for each one: that exact error; an audit record of it (a `denied` or `rejected`
record, or an `outcome` carrying the error); and then a legitimate neighbour operation of
the same syscall, which must still work. Before and after, every file outside the
neighbours' own is hashed: nothing may have changed.
"""

from __future__ import annotations

import hashlib
import os
import shutil
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from broker import AgentImage, Kernel
from broker.caps import FileId, VirtualPath
from broker.errors import Conflict, InvalidArgument, LibosError, NotCapable, NotFound
from broker.providers.fs import LocalFs
from broker.store.audit import WHOLE

SECRET, PRIVATE, HOST, PASSWD = b"SECRET\n", b"PRIVATE\n", b"HOST\n", b"root:x:0:0\n"
NEIGHBOUR = "neighbour"
SCOPE = {"kind": "fs", "scope": "/work/pub/**", "rights": ["read", "write"]}
DENY = {"kind": "fs", "scope": "/work/pub/private/**", "rights": ["read", "write"],
        "effect": "deny"}

# Every fs syscall that takes a path, in each of its shapes.
VARIANTS: tuple[tuple[str, dict[str, Any]], ...] = (
    ("fs.read", {}), ("fs.read", {"binary": True}), ("fs.read", {"offset": 1, "length": 3}),
    ("fs.write", {"data": "x"}), ("fs.write", {"data": b"x", "append": True}),
    ("fs.write", {"data": "x", "exclusive": True}),
    ("fs.list", {}), ("fs.stat", {}),
    ("fs.mkdir", {}), ("fs.mkdir", {"parents": True}),
    ("fs.remove", {}), ("fs.remove", {"recursive": True}),
    ("fs.chdir", {}),
)
OPS = tuple(dict.fromkeys(op for op, _ in VARIANTS))


@dataclass(frozen=True)
class Attempt:
    category: str
    op: str
    args: dict[str, Any]
    expect: type[LibosError] | tuple[type[LibosError], ...]
    pid: str = "main"  # or "rooted": the process whose root is /work/pub
    race: tuple[str, str, str] | None = None  # (what is swapped, for what, target)

    def __str__(self) -> str:
        race = f" race={self.race}" if self.race else ""
        return f"[{self.category}] {self.pid} {self.op} {self.args!r}{race}"


# -- the tree ----------------------------------------------------------------------------------


@dataclass
class Tree:
    fs_root: Path
    outside: Path
    # Symlinks planted inside /work/pub/links (by an archive, another user, an `ln`).
    links: dict[str, str] = field(default_factory=dict)


def plant(tmp: Path) -> Tree:
    fs_root, outside = tmp / "fs", tmp / "outside"
    tree = Tree(fs_root, outside)
    for d in ("work/pub/dir/sub", "work/pub/private/sub", "work/secret/sub", "etc",
              "work/pub/race/dir/sub", "work/pub/links", "work/pub/hl"):
        (fs_root / d).mkdir(parents=True, exist_ok=True)
    (outside / "dir").mkdir(parents=True)
    (fs_root / "work/pub/ok.txt").write_text(NEIGHBOUR)
    (fs_root / "work/pub/dir/f.txt").write_text("f")
    (fs_root / "work/pub/race/dir/f.txt").write_text("race")
    (fs_root / "work/pub/private/key").write_bytes(PRIVATE)
    (fs_root / "work/secret/key").write_bytes(SECRET)
    (fs_root / "etc/passwd").write_bytes(PASSWD)
    (outside / "host.txt").write_bytes(HOST)
    real_root = os.path.realpath(fs_root)
    tree.links = {
        "abs_out": str(outside / "host.txt"),
        "abs_out_dir": str(outside / "dir"),
        "abs_out_dangling": str(outside / "nothing" / "here"),
        "host_root": "/",
        "host_etc": "/etc/passwd",
        "fs_root": real_root,
        "fs_root_secret": os.path.join(real_root, "work/secret/key"),
        "rel_out": "../../../../" + "../" * 8 + "outside/host.txt",
        "rel_out_exact": os.path.relpath(outside / "host.txt", fs_root / "work/pub/links"),
        "secret": "../../secret/key",
        "secret_dir": "../../secret",
        "secret_dangling": "../../secret/not-yet",
        "private": "../private/key",
        "private_dir": "../private",
        "etc": "../../../etc/passwd",
        "proc_root": "/proc/self/root",
        "proc_cwd": "/proc/self/cwd",
        "proc_fd": "/proc/self/fd/0",
        "proc_environ": "/proc/self/environ",
        "proc_thread": "/proc/thread-self/root/etc/passwd",
        "dev_stdin": "/dev/stdin",
        "rel_proc": "../../../" + "../" * 6 + "proc/self/root/etc/passwd",
        "chain_a": "chain_b",
        "chain_b": "chain_c",
        "chain_c": "../../secret/key",
        "to_link_out": "abs_out",
        "loop": "loop",
        "loop_a": "loop_b",
        "loop_b": "loop_a",
        "long_climb": "/".join([".."] * 1000) + "/etc/passwd",
    }
    for name, target in tree.links.items():
        os.symlink(target, fs_root / "work/pub/links" / name)
    return tree


# Files a neighbour operation may create or change (nothing else may change).
NEIGHBOUR_FILES = ("work/pub/scratch.txt", "work/pub/made", "work/pub/gone.txt")


def snapshot(tree: Tree) -> dict[str, tuple[str, str]]:
    """Every path under the broker's tree and the host directory: its kind and its content
    (a file's sha256, a link's target), minus the neighbours' own files."""
    found: dict[str, tuple[str, str]] = {}
    for base in (tree.fs_root, tree.outside):
        for dirpath, dirnames, filenames in os.walk(base):
            for name in dirnames + filenames:
                path = Path(dirpath, name)
                rel = str(path.relative_to(tree.fs_root.parent))
                if any(rel == f"fs/{n}" or rel.startswith(f"fs/{n}/") for n in NEIGHBOUR_FILES):
                    continue
                if path.is_symlink():
                    found[rel] = ("link", os.readlink(path))
                elif path.is_dir():
                    found[rel] = ("dir", "")
                else:
                    found[rel] = ("file", hashlib.sha256(path.read_bytes()).hexdigest())
    return found


# -- the attempts ------------------------------------------------------------------------------


def _every_op(category: str, paths: list[str], expect: type[LibosError], *,
              pid: str = "main", skip: tuple[tuple[str, str], ...] = ()) -> Iterator[Attempt]:
    for path in paths:
        for op, extra in VARIANTS:
            if (op, next(iter(extra), "")) in skip:
                continue
            yield Attempt(category, op, {"path": path, **extra}, expect, pid)


TRAVERSAL = [
    "..", "../..", "../../..", "/..", "/../..", "/../../../../etc/passwd",
    "../secret/key", "../secret", "../secret/", "../../etc/passwd", "./../secret/key",
    ".././../work/secret/key", "../pub/../secret/key", "dir/../../secret/key",
    "dir/../../../etc/passwd", "/work/pub/../secret/key", "/work/pub/./../secret/key",
    "/work/pub//..//secret//key", "/work/pub/dir/../../secret/key",
    "/work/pub/dir/sub/../../../secret/key", "/work/pub/private/../private/key",
    "/work/pub/dir/../private/key", "/work/pub/private", "/work/pub/private/",
    "private/key", "./private/key", "private/sub", "/work/pub/private/sub/../key",
    "/work/pub/" + "x/../" * 400 + "../secret/key", "/work/secret/key", "/work/secret",
    "/etc/passwd", "/", "/work", "../../../../../../../../../../../../etc/passwd",
]
PROC = [
    "/proc/self/root/etc/passwd", "/proc/self/cwd", "/proc/self/fd/0", "/proc/self/environ",
    "/proc/self/mem", "/proc/self/exe", "/proc/thread-self/root", "/proc/1/root/etc/shadow",
    "/dev/fd/0", "/dev/stdin", "/sys/kernel", "../../proc/self/root/etc/passwd",
    "../../../proc/self/cwd", "/work/pub/../../proc/self/environ",
    "/work/pub/" + "../" * 12 + "proc/self/root",
]
SYMLINK_PATHS = [f"/work/pub/links/{name}" for name in (
    "abs_out", "abs_out_dir", "abs_out_dangling", "host_root", "host_etc", "fs_root",
    "fs_root_secret", "rel_out", "rel_out_exact", "secret", "secret_dir", "secret_dangling",
    "private", "private_dir", "etc", "proc_root", "proc_cwd", "proc_fd", "proc_environ",
    "proc_thread", "dev_stdin", "rel_proc", "chain_a", "to_link_out", "long_climb")] + [
    "/work/pub/links/abs_out_dir/x", "/work/pub/links/secret_dir/key",
    "/work/pub/links/secret_dir/sub/new", "/work/pub/links/private_dir/key",
    "/work/pub/links/fs_root/work/secret/key", "/work/pub/links/proc_root/etc/passwd",
    "/work/pub/links/host_root/etc/passwd", "links/secret", "links/abs_out/",
    "./links/private_dir/", "dir/../links/chain_a", "/work/pub/links/secret_dir/../secret/key",
]
LOOPS = ["/work/pub/links/loop", "/work/pub/links/loop_a", "/work/pub/links/loop/x",
         "links/loop_b/"]
# Aliases whose literal reading is outside the scope (or under the deny rule): the
# capability never folds case, normalises Unicode or decodes anything.
ALIASES_OUT = [
    "/work/PUB/ok.txt", "/WORK/pub/ok.txt", "/Work/Pub/ok.txt", "/work/SECRET/key",
    "/work/Secret/key", "/work/pub/private/KEY", "/work/pub/private/key\u200b",
    "/work/\uff50\uff55\uff42/ok.txt",  # fullwidth "pub"
    "/work/p\u200bub/ok.txt", "/work/pub\u200d/ok.txt", "/work/pu\u0301b/ok.txt",
    "/work/\u0440ub/ok.txt",  # Cyrillic er
    "/work/pub\uff0f..\uff0f..\uff0fsecret\uff0fkey",  # fullwidth solidus
    "/work/pub\u2215..\u2215secret\u2215key",  # division slash
    "/work/pub\u2044..\u2044secret", "/work/pub\\..\\secret\\key",
    "/work/pub%2f..%2fsecret%2fkey", "/work/pub%2F%2E%2E%2Fsecret",
    "/work/pub\u00c0\u00af..\u00c0\u00afsecret",  # an overlong "/" as Latin-1 text
    "/work/\u00c0\u00ae\u00c0\u00ae/secret/key", "/work/pub/private/sub/KEY",
    "/work/pub/private/sub/../KEY", "/work/pub/PRIVATE/../private/key",
]
# Aliases whose literal reading lies inside the scope: on this host (case-sensitive, no
# normalisation) each names a file that does not exist, never the denied or secret one.
ALIASES_IN = [
    "/work/pub/PRIVATE/key", "/work/pub/Private/key", "/work/pub/private\u200b/key",
    "/work/pub/\uff50\uff52\uff49\uff56\uff41\uff54\uff45/key", "/work/pub/\u2025/secret/key",
    "/work/pub/\u2024\u2024/secret/key", "/work/pub/\uff0e\uff0e/secret/key",
    "/work/pub/%2e%2e/secret/key", "/work/pub/..\\secret/key", "/work/pub/..;/secret/key",
    "/work/pub/..../secret/key", "/work/pub/. ./secret/key", "/work/pub/.. /secret/key",
    "/work/pub/\u3002\u3002/secret/key", "/work/pub/\u00c0\u00ae\u00c0\u00ae/secret/key",
]
NUL = ["\x00", "/work/pub/ok.txt\x00", "/work/pub/ok.txt\x00.png", "/work/pub/\x00/../ok.txt",
       "../secret/key\x00", "/work/secret/key\x00/../../pub/ok.txt", "\x00/etc/passwd",
       "links/secret\x00"]
OVERLONG = ["/work/pub/" + "a" * 256, "/work/pub/" + "a" * 300 + "/x",
            "/work/pub/" + "\u00e9" * 200,  # 400 bytes of UTF-8 in one name
            "/work/pub/" + "a" * 4100, "/work/pub" + "/a" * 300,
            "/work/pub/" + "/".join(["d"] * 257)]
# Seen from the process whose root is /work/pub.
ROOTED = ["/..", "..", "../..", "/../secret/key", "/../../etc/passwd", "../pub/ok.txt",
          "/private/key", "/private", "private/../private/key", "/links/secret",
          "/links/fs_root", "/links/rel_out", "/links/etc", "dir/../../secret/key",
          "/dir/../../pub/ok.txt"]

# Races: after the check and before the effect, an attacker swaps a directory on the path
# (or the last component) for a symlink. The provider opens each component with O_NOFOLLOW
# from the root, so the call fails; it never follows the swapped-in link.
RACE_TARGETS = {"outside": "{outside}/dir", "host": "/etc", "secret": "../../../secret",
                "private": "../../private", "proc": "/proc/self/root", "fs_root": "{fs_root}"}
RACE_FILE_TARGETS = {"outside": "{outside}/host.txt", "secret": "../../../secret/key",
                     "private": "../../private/key", "proc": "/proc/self/environ",
                     "host": "/etc/passwd"}
RACE_PATHS = {"fs.read": "race/dir/f.txt", "fs.write": "race/dir/f.txt",
              "fs.list": "race/dir/sub", "fs.stat": "race/dir/f.txt",
              "fs.mkdir": "race/dir/new", "fs.remove": "race/dir/f.txt",
              "fs.chdir": "race/dir/sub"}
# A swapped last component: what it does to each syscall. `stat` reports the link itself and
# `remove` removes the link (neither reaches the target), so they are not attempts here.
# `chdir`: InvalidArgument when the check's own look saw the link (the walk identifies after
# the move), Conflict when the check had resolved and identified the directory in one look
# (openat2) and the stat then found a link in its place.
RACE_FINAL: dict[str, type[LibosError] | tuple[type[LibosError], ...]] = {
    "fs.read": Conflict, "fs.write": Conflict, "fs.list": Conflict,
    "fs.chdir": (InvalidArgument, Conflict), "fs.mkdir": Conflict}


def races() -> Iterator[Attempt]:
    for target in RACE_TARGETS:
        for op, extra in VARIANTS:
            yield Attempt("race", op, {"path": "/work/pub/" + RACE_PATHS[op], **extra},
                          Conflict, race=("race/dir", "symlink", RACE_TARGETS[target]))
    for target in RACE_FILE_TARGETS:
        for op, extra in VARIANTS:
            if op not in RACE_FINAL:
                continue
            swapped = "race/dir/" + RACE_PATHS[op].rsplit("/", 1)[1]
            yield Attempt("race", op, {"path": "/work/pub/" + RACE_PATHS[op], **extra},
                          RACE_FINAL[op], race=(swapped, "symlink", RACE_FILE_TARGETS[target]))


def corpus() -> list[Attempt]:
    """Every attempt that today's code must refuse."""
    in_scope_skip = (("fs.mkdir", "parents"),)  # would make the (harmless) directories
    return [
        *_every_op("traversal", TRAVERSAL, NotCapable),
        *_every_op("proc", PROC, NotCapable),
        *_every_op("symlink", SYMLINK_PATHS, NotCapable),
        *_every_op("symlink loop", LOOPS, InvalidArgument),
        *_every_op("alias", ALIASES_OUT, NotCapable),
        *_every_op("alias in scope", ALIASES_IN, NotFound, skip=in_scope_skip),
        *_every_op("nul", NUL, InvalidArgument),
        *_every_op("overlong", OVERLONG, InvalidArgument),
        *_every_op("rooted", ROOTED, NotCapable, pid="rooted"),
        *races(),
    ]


# Hardlinks: planted in /work/pub/hl to a denied file, a file outside the scope and a file
# outside the broker's tree (another name for the same inode, so no symlink check sees them).
HARDLINKS = {"private": "work/pub/private/key", "secret": "work/secret/key",
             "etc": "etc/passwd", "outside": "../outside/host.txt"}
LINKED_OPS = [v for v in VARIANTS if v[0] in ("fs.read", "fs.write")]


def plant_hardlinks(tree: Tree) -> None:
    for name, target in HARDLINKS.items():
        os.link(tree.fs_root / target, tree.fs_root / "work/pub/hl" / name)


def _linked_refusal(extra: dict[str, Any]) -> tuple[type[LibosError], ...]:
    # An exclusive write to a name that exists is a Conflict before any link is looked at.
    return (NotCapable, Conflict) if extra.get("exclusive") else (NotCapable,)


def hardlink_corpus() -> list[Attempt]:
    attempts = []
    for name in HARDLINKS:
        for path in (f"/work/pub/hl/{name}", f"hl/{name}", f"./hl/{name}",
                     f"/work/pub/dir/../hl/{name}", f"/work/pub//hl/{name}"):
            attempts += [Attempt("hardlink", op, {"path": path, **extra}, _linked_refusal(extra))
                         for op, extra in LINKED_OPS]
        # a race: the checked file is swapped for a hardlink after the check (NotCapable when
        # the check's last look, the walk's `identify`, saw the link; Conflict when one look
        # resolved and identified the file, with openat2, and the act found another inode)
        attempts += [Attempt("hardlink race", op, {"path": "/work/pub/race/dir/f.txt",
                                                   **extra}, (NotCapable, Conflict),
                             race=("race/dir/f.txt", "hardlink", HARDLINKS[name]))
                     for op, extra in LINKED_OPS]
    return attempts


# -- the runner --------------------------------------------------------------------------------


def after_the_check(monkeypatch: Any, fs: Any, move: Callable[[], None],
                    before: Callable[[], None] | None = None) -> list[VirtualPath]:
    """Play `move` right after the check's last look at the tree: `identify`, or `locate`
    when that one look both resolved and identified the path (a plain path, with openat2).
    `before` runs ahead of each `locate` (to start from the real tree again). Returns the
    paths the checks resolved, as they come."""
    locate, identify = fs.locate, fs.identify
    seen: list[VirtualPath] = []

    def locate_then_move(path: VirtualPath) -> Any:
        if before is not None:
            before()
        resolved, found = locate(path)
        seen.append(resolved)
        if found is not None:
            move()
        return resolved, found

    def identify_then_move(path: VirtualPath) -> Any:
        found = identify(path)
        move()
        return found

    monkeypatch.setattr(fs, "locate", locate_then_move)
    monkeypatch.setattr(fs, "identify", identify_then_move)
    return seen


class RacyFs(LocalFs):
    """The real rooted provider, with the attacker's move played between the check (which
    resolves the path) and the effect: the worst moment, every time, instead of by luck."""

    def __init__(self, root: str | Path) -> None:
        super().__init__(root)
        self.move: Callable[[], None] | None = None

    def locate(self, path: VirtualPath) -> tuple[VirtualPath, FileId | None]:
        located = super().locate(path)
        move, self.move = self.move, None
        if move is not None:
            move()
        return located


@dataclass
class Runner:
    kernel: Kernel
    tree: Tree
    fs: RacyFs
    pids: dict[str, int]
    failures: list[str] = field(default_factory=list)
    refused: int = 0

    @classmethod
    async def start(cls, kernel: Kernel, tree: Tree, fs: RacyFs) -> Runner:
        await kernel.register_image(AgentImage("attacker", tools=(), needs=("fs:/**:read,write",)))
        main = kernel.spawn("attacker", caps=[SCOPE, DENY])
        rooted = kernel.spawn("attacker", caps=[SCOPE, DENY], root="/work/pub")
        runner = cls(kernel, tree, fs, {"main": main, "rooted": rooted})
        runner.call("main", "fs.chdir", {"path": "/work/pub"})
        return runner

    def call(self, pid: str, op: str, args: dict[str, Any]) -> Any:
        return self.kernel.dispatcher.run_now(self.kernel.process(self.pids[pid]), None, op, args)

    def play(self, attempt: Attempt) -> None:
        store = self.kernel.store
        before = store.head_seq
        undo = self._arm(attempt.race) if attempt.race else None
        try:
            result = self.call(attempt.pid, attempt.op, attempt.args)
        except LibosError as exc:
            error: LibosError | None = exc
        else:
            error = None
            self.failures.append(f"{attempt}: not refused, returned {result!r:.80}")
        finally:
            self.fs.move = None
            if undo is not None:
                undo()
        if error is not None:
            expect = attempt.expect if isinstance(attempt.expect, tuple) else (attempt.expect,)
            if type(error) not in expect:
                self.failures.append(f"{attempt}: {type(error).__name__} ({error.message:.100}), "
                                     f"not {' or '.join(e.__name__ for e in expect)}")
            elif not self._audited(before, attempt.op, error.code):
                self.failures.append(f"{attempt}: refused without an audit record of it")
            else:
                self.refused += 1
        self._neighbour(attempt.pid, attempt.op, attempt)

    def _audited(self, before: int, op: str, code: str) -> bool:
        records = list(self.kernel.store.audit_records(after=before))
        return 0 < len(records) <= 2 and any(
            r.record.syscall == op and r.record.phase in ("denied", "rejected", "outcome", WHOLE)
            and r.record.detail.get("error") == code for r in records)

    def _neighbour(self, pid: str, op: str, attempt: Attempt) -> None:
        """The same syscall on the process's own files still works after the refusal."""
        base = "/work/pub" if pid == "main" else ""
        try:
            if op == "fs.read":
                ok = self.call(pid, op, {"path": f"{base}/ok.txt"}) == NEIGHBOUR
            elif op == "fs.write":
                ok = self.call(pid, op, {"path": f"{base}/scratch.txt", "data": "x"}) == 1
            elif op == "fs.list":
                ok = [e["name"] for e in self.call(pid, op, {"path": f"{base}/dir"})] == \
                    ["f.txt", "sub"]
            elif op == "fs.stat":
                ok = self.call(pid, op, {"path": f"{base}/ok.txt"})["size"] == len(NEIGHBOUR)
            elif op == "fs.mkdir":
                ok = self.call(pid, op, {"path": f"{base}/made", "parents": True}) is None
            elif op == "fs.remove":
                self.call(pid, "fs.write", {"path": f"{base}/gone.txt", "data": ""})
                ok = self.call(pid, op, {"path": f"{base}/gone.txt"}) is None
            else:
                ok = self.call(pid, op, {"path": base or "/"}) == (base or "/")
        except LibosError as exc:
            ok = False
            self.failures.append(f"{attempt}: the neighbour {op} failed after it: {exc!r}")
        if not ok:
            self.failures.append(f"{attempt}: the neighbour {op} gave a wrong answer after it")

    def _arm(self, race: tuple[str, str, str]) -> Callable[[], None]:
        """Set the attacker's swap to happen right after the check; returns the undoing."""
        where, how, target = race
        path = self.tree.fs_root / "work/pub" / where
        aside = path.with_name(path.name + ".aside")
        target = target.format(outside=self.tree.outside, fs_root=self.tree.fs_root)

        swapped = []

        def swap() -> None:
            swapped.append(True)
            if path.exists():
                os.rename(path, aside)
            if how == "symlink":
                os.symlink(target, path)
            else:
                os.link(self.tree.fs_root / target, path)

        def undo() -> None:
            if not swapped:
                return
            if path.is_symlink() or path.is_file():
                os.unlink(path)
            elif path.is_dir():
                shutil.rmtree(path)
            if aside.exists() or aside.is_symlink():
                os.rename(aside, path)

        self.fs.move = swap
        return undo
