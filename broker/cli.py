"""The `libos` command: tables for people, `--json` for machines, `--db PATH` everywhere (an
SQLite file, or a PostgreSQL database: `--db postgresql://...`)."""

from __future__ import annotations

# First: `libos demo` starts its sandboxes here, while the modules below are imported.
from broker import cli_prestart  # isort: skip

import argparse
import contextlib
import getpass
import json
import logging
import os
import sys
import time
from collections.abc import Callable, Sequence
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any

import trio
from rich.console import Console

from broker import cli_control, cli_parser, render, render_long
from broker.cli_errors import (
    EXIT_INTERRUPTED,
    EXIT_STDOUT_CLOSED,
    FailedBesideCtrlC,
    OutputConsole,
    StdoutClosed,
    UsageError,
    flush_std_streams,
    quiet_logging,
    report,
    report_beside_ctrl_c,
    report_internal,
    report_usage,
    typed_errors,
)
from broker.command_trio import run_command, uninterrupted
from broker.errors import Conflict, InvalidArgument, LibosError, NotFound
from broker.progress import Progress

if TYPE_CHECKING:
    from broker.store import Store

DEFAULT_DB = cli_parser.DEFAULT_DB
# The store's modules (SQLite, the audit chain, cryptography for its signatures) are imported by
# the commands that use them, not with this module: `libos demo` starts its sandboxes first,
# and the store comes with the kernel while they start (about 40 ms earlier here).


def _target(args: argparse.Namespace) -> str | Path:
    """The store `--db` names: a database's address, or a file that must exist."""
    from broker.store.location import is_database

    if is_database(args.db):
        return str(args.db)
    path = Path(args.db)
    if not path.exists():
        raise NotFound(f"no store at {path} (use --db PATH)")
    return path


def _location(args: argparse.Namespace) -> str | Path:
    """Where `--db` points, for a command that may make the store (run, mcp)."""
    from broker.store.location import is_database

    return str(args.db) if is_database(args.db) else Path(args.db)


def _store(args: argparse.Namespace) -> Store:
    from broker.store.opening import open_store

    return open_store(_target(args), writer=False)  # type: ignore[no-any-return]


def _emit(args: argparse.Namespace, console: Console, data: Any, table: Any) -> None:
    if args.json:
        render.print_json(data)
    else:
        render_long.printed(console, table)


def cmd_demo(args: argparse.Namespace, console: Console) -> int:
    from broker.demo import command

    verified = command(args.db if args.db_given else None, console, cli_prestart.take())
    # Its brokers closed their stores, its sandboxes and act 2's broker are reaped, its
    # compiled modules written, its temporary store removed: nothing is left for the
    # interpreter's teardown to finish.
    args.settled = True
    return 0 if verified else 1


def cmd_ps(args: argparse.Namespace, console: Console) -> int:
    from broker.kernel.end_result import checked_rows
    from broker.kernel.revived import held_ends, recorded_ends
    from broker.lifecycle import LIVE
    from broker.store.anchored_reads import count_as_anchored

    store = _store(args)
    procs = store.list_processes()
    # A row set live again that the chain says ended: the kernel will not run it.
    live = {state.value for state in LIVE}
    # (Counted as the broker's next open counts, red team 10; a walk: only if one is needed:
    # a live row, or a code shown that its end must vouch for, red team 16.)
    walk = args.json or any(p["state"] in live or p["exit_code"] is not None for p in procs)
    past = count_as_anchored(store) if walk else 0
    lives = [p["pid"] for p in procs if p["state"] in live]
    # (brokers sharing the store hold these, as their opens count: not ended, not run)
    held = held_ends(store, lives)
    ended = {pid: seq for pid, seq in recorded_ends(store, lives).items() if pid not in held}
    for proc in procs:
        if proc["pid"] in ended:
            proc["ended_by"] = ended[proc["pid"]]
        if proc["pid"] in held:
            proc["held_by"] = held[proc["pid"]]
    if walk:  # (results and codes as their ends vouch)
        procs = checked_rows(store, procs)
    if args.json:
        _emit(args, console, procs, None)
    else:
        # (Past `render_long.LONG` rows, one line a row: printed whole, not cut to the width.)
        render_long.printed(console, render.tree(procs))
        render_long.printed(console, render.ps_table(procs))
        if ended:
            console.print(REVIVED_NOTE)
        if held:
            console.print(HELD_NOTE)
        if past:
            console.print(PAST_NOTE.format(past=past))
    return 0


REVIVED_NOTE = (
    "ended by record N: the row says live, but the audit chain records its end; the broker "
    "does not run it (it ends it again at its next load). Read without the writer's key, as "
    "its next open reads: only what the signed anchor covers counts (libos audit --verify).")
HELD_NOTE = (
    "held by unsigned record N: a record past the chain's audit.signed marker would end it but"
    " carries no signature by a key trusted here; no broker runs it, nor ends it, until the"
    " host kills it (libos kill).")
PAST_NOTE = (
    "{past} audit record(s) past the signed anchor are not counted here (a running broker's "
    "newest, signed within a moment: run ps again; or appended without its key: libos "
    "audit --verify).")


def cmd_audit(args: argparse.Namespace, console: Console) -> int:
    from broker.store import keys
    from broker.store.audit import as_listed
    from broker.store.export import export, verify_export
    from broker.store.verify import unchecked_capabilities

    if args.rotate_key:
        return _rotate_key(args, console)
    public_key = keys.read_public(args.public_key) if args.public_key else None
    if args.verify and args.source:
        count, problems = verify_export(args.source, public_key or keys.own_public())
        return _verdict(args, console, count, problems)
    store = _store(args)
    if args.verify:
        count, problems = store.audit_problems(
            public_key=public_key, trust=[keys.read_public(path) for path in args.trust])
        return _verdict(args, console, count, problems, unchecked_capabilities(store))
    if args.export:
        count = export(store, args.export)
        console.print(f"{count} records and the signed anchor written to "
                      f"{render.inert(args.export, 200)}")
        return 0
    found = list(store.audit_records(pid=args.pid))
    if args.limit:  # records, not lines: a call is never shown without the read folded in it
        found = found[-args.limit:]
    records = [line for r in found for line in as_listed(r.to_json())]
    _emit(args, console, records, render.audit_table(records))
    return 0


def _verdict(args: argparse.Namespace, console: Console, count: int, problems: list[str],
             unchecked: int = 0) -> int:
    """`unchecked`: capability rows no record could vouch for (made before records carried
    digests): said, never failed."""
    from broker.store.anchor import Finding

    if args.json:
        verdict: dict[str, Any] = {"records": count, "ok": not problems, "problems": problems}
        if unchecked:
            verdict["unchecked_capabilities"] = unchecked
        findings = [{"record": p.seq, "kind": p.kind, "problem": p} for p in problems
                    if isinstance(p, Finding)]
        if findings:  # the anchors' problems, by kind (`broker.store.anchor.Finding`)
            verdict["findings"] = findings
        render.print_json(verdict)
    else:
        console.print(render.verdict(count, problems))
        if unchecked:
            console.print(f"{unchecked} capability rows not checked: their processes were "
                          "made before records carried digests of them")
    return 1 if problems else 0


def _rotate_key(args: argparse.Namespace, console: Console) -> int:
    """A new signing key, endorsed by the old one; the store named by --db (if no broker has
    it open) records the rotation now, every other store when a broker next opens it."""
    from broker.store import keys, signing
    from broker.store.location import is_database
    from broker.store.opening import open_store

    step = keys.rotate(args.key)
    where = keys.key_path(args.key)
    console.print(f"audit key {where} rotated: {signing.fingerprint(step.previous)} → "
                  f"{signing.fingerprint(step.key)}; give verifiers {keys.public_path(where)}")
    if args.db_given and (is_database(args.db) or Path(args.db).exists()):
        try:
            uninterrupted(lambda: open_store(args.db, audit_key=args.key).close())
        except Conflict:
            console.print(f"{args.db} is open in a broker: it records the rotation when a "
                          "broker next opens it")
        else:
            console.print(f"{args.db} recorded the rotation and is signed with the new key")
    return 0


def cmd_caps(args: argparse.Namespace, console: Console) -> int:
    store = _store(args)
    store.get_process(args.pid)  # NotFound for an unknown pid
    caps = [{"handle": h, **c.to_wire()} for h, c in store.load_capabilities()
            if c.owner == args.pid]
    _emit(args, console, caps, render.caps_table(caps))
    return 0


def cmd_approvals(args: argparse.Namespace, console: Console) -> int:
    from broker.approvals.closed import ClosedOnChain
    from broker.approvals.stored import listed_as_recorded, public, resolve_id

    store, closed = _store(args), ClosedOnChain(whole=True)  # (as the chain records them)
    if args.show is not None:
        row = store.get_approval(resolve_id(store, args.show))
        request = public(closed.open_rows(store, [row])[0])
        if args.json:
            _emit(args, console, request, None)
        else:  # whole: long lines are left to the terminal (or a pager) to wrap
            console.print(render.approval_view(request), soft_wrap=True, end="")
        return 0
    requests = listed_as_recorded(store, closed, None if args.all else "pending")
    _emit(args, console, requests, render.approvals_table(requests))
    if not args.json:
        console.print(render.approvals_hint(args.db if args.db_given else None, requests),
                      soft_wrap=True)
    return 0


def _answer(args: argparse.Namespace, console: Console, answer: str, value: Any = None) -> int:
    # The CLI never writes the audit: it writes the answer into the pending request, and the
    # broker (now, or when it next opens) audits and applies it.
    from broker.approvals.stored import answer_in_store

    request = answer_in_store(_store(args), args.id, answer, who=f"cli:{getpass.getuser()}",
                              now=time.time(), scope=getattr(args, "scope", None), value=value,
                              by_prefix=True, shown=args.shown)
    if args.json:
        _emit(args, console, request, None)
    else:
        console.print(render.inert(f"{request['id']}: {request['state']} ({answer})", 200))
    return 0


def cmd_approve(args: argparse.Namespace, console: Console) -> int:
    return _answer(args, console, "always" if args.always else "once")


def cmd_deny(args: argparse.Namespace, console: Console) -> int:
    return _answer(args, console, "deny-always" if args.always else "deny")


def cmd_answer(args: argparse.Namespace, console: Console) -> int:
    from broker.json_text import answer_value

    return _answer(args, console, "answer", args.value if args.text else answer_value(args.value))


def cmd_web(args: argparse.Namespace, console: Console) -> int:
    from broker.approvals.stored import StoreApprovals
    from broker.cli_control import signer
    from broker.providers.web import serve

    api = StoreApprovals(_store(args), time.time, signer("an answer through the store"))

    async def run() -> None:
        async with trio.open_nursery() as nursery:
            url = await nursery.start(partial(serve, api, port=args.port,
                                              who=f"web:{getpass.getuser()}"))
            if args.json:
                print(json.dumps({"url": url}), flush=True)
            else:
                console.print(f"approvals page: {url} (Ctrl-C to stop)")

    with contextlib.suppress(KeyboardInterrupt):
        run_command(run)
    return 0


def cmd_images(args: argparse.Namespace, console: Console) -> int:
    images = _store(args).list_images()
    _emit(args, console, images, render.images_table(images))
    return 0


def cmd_image(args: argparse.Namespace, console: Console) -> int:
    """`image show NAME[@VERSION]`: the newest version unless one is named."""
    name, at, version = args.name.rpartition("@")
    if not at or not name or not version:
        name, version = args.name, None
    version, spec = _store(args).get_image(name, version)
    if args.json:
        _emit(args, console, spec, None)
    else:
        for part in render.image_view(spec):
            render_long.printed(console, part)
    return 0


def cmd_checkpoints(args: argparse.Namespace, console: Console) -> int:
    from broker.store.checkpoints import summary

    store = _store(args)
    store.get_process(args.pid)  # NotFound for an unknown pid
    kept = [summary(c) for c in store.checkpoint_log(args.pid)]
    _emit(args, console, kept, render.checkpoints_table(kept))
    return 0


def cmd_fork(args: argparse.Namespace, console: Console) -> int:
    return cli_control.fork(_store(args), args, console)


def cmd_pause(args: argparse.Namespace, console: Console) -> int:
    return cli_control.control(_store(args), args, console, "pause")


def cmd_kill(args: argparse.Namespace, console: Console) -> int:
    return cli_control.control(_store(args), args, console, "kill")


def cmd_resume(args: argparse.Namespace, console: Console) -> int:
    if args.pid is not None:
        return cli_control.control(_store(args), args, console, "resume")
    if not args.all:
        raise InvalidArgument("resume needs a PID or --all")
    from broker.resume_all import resume_all

    outcome = run_command(partial(resume_all, _target(args), args.seconds, console,
                               quiet=args.json, db_shown=args.db if args.db_given else None))
    if args.json:
        _emit(args, console, outcome, None)
    return 0


def cmd_bench(args: argparse.Namespace, console: Console) -> int:
    from broker import benchmarks

    if args.suites or args.only:
        return benchmarks.run(Path(args.out) if args.out else None, args.only or ())
    return benchmarks.report(Path(args.out_dir) if args.out_dir else None, quick=args.quick,
                             sections=args.section or ())


def cmd_run(args: argparse.Namespace, console: Console) -> int:
    from broker.run import exit_code, run_agent

    # With --json, stdout holds only the final status; the transcript goes to stderr.
    shown = Console(stderr=True, highlight=False, soft_wrap=False) if args.json else console
    status = run_command(partial(run_agent, _location(args), args.image, args.goal, args.caps,
                              shown, timeout=args.timeout or None))
    if args.json:
        _emit(args, console, status, None)
    return exit_code(status)


def cmd_mcp(args: argparse.Namespace, console: Console) -> int:
    from broker.mcp_server import serve_stdio

    return run_command(partial(serve_stdio, _location(args), args.image, args.caps, pid=args.pid,
                            keep=args.keep, attach=args.attach))


def cmd_serve(args: argparse.Namespace, console: Console) -> int:
    from broker.serve import serve

    shown = Console(stderr=True, highlight=False, soft_wrap=False) if args.json else console
    outcome = run_command(partial(serve, str(args.db), args.broker, shown, lease_ttl=args.lease,
                               seconds=args.seconds, until_idle=args.until_idle))
    if args.json:
        _emit(args, console, outcome, None)
    return 0


def cmd_setup(args: argparse.Namespace, console: Console) -> int:
    from sandboxes.pyodide import PYODIDE_VERSION, setup

    with Progress() as progress:  # a failure is a LibosError (SandboxCrashed)
        directory = setup(force=args.force, progress=progress.update)
    if args.json:
        _emit(args, console, {"pyodide": str(directory)}, None)
    else:  # one line, however long the path
        console.print(render.inert(f"pyodide {PYODIDE_VERSION}: ready in {directory}", None),
                      soft_wrap=True)
    return 0


def cmd_keys(args: argparse.Namespace, console: Console) -> int:
    from broker.cli_keys import cmd_keys as keys_command

    return keys_command(args, console)


COMMANDS: dict[str, Callable[[argparse.Namespace, Console], int]] = {
    "demo": cmd_demo, "ps": cmd_ps, "audit": cmd_audit, "caps": cmd_caps,
    "approvals": cmd_approvals, "approve": cmd_approve, "deny": cmd_deny, "answer": cmd_answer,
    "web": cmd_web, "images": cmd_images, "image": cmd_image, "checkpoints": cmd_checkpoints,
    "fork": cmd_fork, "pause": cmd_pause, "kill": cmd_kill, "resume": cmd_resume,
    "run": cmd_run, "mcp": cmd_mcp, "setup": cmd_setup, "bench": cmd_bench,
    "serve": cmd_serve, "keys": cmd_keys}


def build_parser() -> argparse.ArgumentParser:
    return cli_parser.build_parser(COMMANDS)


def entry() -> int:
    """The process's entry point (the `libos` script, `python -m broker.cli`)."""
    return main(whole_process=True)


def _leave_now(code: int) -> None:
    """End the process at once, output flushed, without the interpreter's teardown: its
    collections over every imported module cost the demo a tenth of its CPU, after the last
    line. Only for a command that says it left nothing to finish (`args.settled`): a store
    some command left open would be committed only by its finalizer. Returns if the output
    cannot be flushed: the interpreter then reports that as it always did."""
    try:
        flush_std_streams()
    except (OSError, ValueError):
        return
    logging.shutdown()
    os._exit(code)


def main(argv: Sequence[str] | None = None, *, whole_process: bool = False) -> int:
    """Run one command; `whole_process`: this process runs only it (see `_leave_now`)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    try:
        args = build_parser().parse_args(argv)
    except UsageError as exc:
        cli_prestart.discard()  # started for a demo that will not run
        return report_usage(exc, argv)
    args.db_given = hasattr(args, "db")
    if not args.db_given:
        args.db = DEFAULT_DB
    args.json = getattr(args, "json", False)
    quiet_logging()
    console = OutputConsole(highlight=False, soft_wrap=False)
    try:
        with typed_errors():
            code = int(args.fn(args, console))
        if whole_process and getattr(args, "settled", False):
            _leave_now(code)
        return code
    except LibosError as exc:
        return report(exc, as_json=args.json)
    except KeyboardInterrupt:
        return EXIT_INTERRUPTED
    except FailedBesideCtrlC as exc:
        return report_beside_ctrl_c(exc, as_json=args.json)
    except StdoutClosed:
        return EXIT_STDOUT_CLOSED
    except OSError as exc:  # a path or port the machine refuses: the person's to fix
        where = f" ({exc.filename})" if exc.filename else ""
        return report(InvalidArgument(f"{exc.strerror or exc}{where}"), as_json=args.json)
    except Exception as exc:
        return report_internal(exc, as_json=args.json)


if __name__ == "__main__":
    sys.exit(entry())
