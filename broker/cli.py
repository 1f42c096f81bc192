"""The `libos` command: tables for people, `--json` for machines, `--db PATH` everywhere."""

from __future__ import annotations

import argparse
import contextlib
import getpass
import json
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from functools import partial
from pathlib import Path
from typing import Any

import trio
from rich.console import Console

from broker import render
from broker.approvals.stored import StoreApprovals, answer_in_store, public, resolve_id
from broker.cli_errors import (
    EXIT_INTERRUPTED,
    Parser,
    UsageError,
    quiet_logging,
    report,
    report_internal,
    report_usage,
    typed_errors,
)
from broker.errors import Conflict, InvalidArgument, LibosError, NotFound
from broker.progress import Progress
from broker.store import SQLiteStore
from broker.store.checkpoints import summary

DEFAULT_DB = "libos.db"
DEFAULT_PORT = 8765


def _store(args: argparse.Namespace) -> SQLiteStore:
    path = Path(args.db)
    if not path.exists():
        raise NotFound(f"no store at {path} (use --db PATH)")
    return SQLiteStore(path, writer=False)


def _emit(args: argparse.Namespace, console: Console, data: Any, table: Any) -> None:
    if args.json:
        # ASCII: the same JSON to a parser, and nothing (a bidi override, U+2028, an 8-bit
        # CSI) that a terminal showing it would act on.
        print(json.dumps(data, default=repr, ensure_ascii=True, indent=2))
    else:
        console.print(table)


def cmd_demo(args: argparse.Namespace, console: Console) -> int:
    from broker.demo import run_demo

    if args.db_given:
        db = Path(args.db)
        if db.exists():
            raise Conflict(f"{db} exists; the demo wants a fresh store")
        return 0 if trio.run(run_demo, db, console) else 1
    with tempfile.TemporaryDirectory(prefix="libos-demo-") as tmp:
        return 0 if trio.run(run_demo, Path(tmp) / "demo.db", console) else 1


def cmd_ps(args: argparse.Namespace, console: Console) -> int:
    procs = _store(args).list_processes()
    if args.json:
        _emit(args, console, procs, None)
    else:
        console.print(render.tree(procs))
        console.print(render.ps_table(procs))
    return 0


def cmd_audit(args: argparse.Namespace, console: Console) -> int:
    store = _store(args)
    if args.verify:
        count, problems = store.audit_problems()
        if args.json:
            print(json.dumps({"records": count, "ok": not problems, "problems": problems},
                             indent=2))
        else:
            console.print(render.verdict(count, problems))
        return 1 if problems else 0
    records = [r.to_json() for r in store.audit_records(pid=args.pid)]
    if args.limit:
        records = records[-args.limit:]
    _emit(args, console, records, render.audit_table(records))
    return 0


def cmd_caps(args: argparse.Namespace, console: Console) -> int:
    store = _store(args)
    store.get_process(args.pid)  # NotFound for an unknown pid
    caps = [{"handle": h, **c.to_wire()} for h, c in store.load_capabilities()
            if c.owner == args.pid]
    _emit(args, console, caps, render.caps_table(caps))
    return 0


def cmd_approvals(args: argparse.Namespace, console: Console) -> int:
    if args.show is not None:
        store = _store(args)
        request = public(store.get_approval(resolve_id(store, args.show)))
        if args.json:
            _emit(args, console, request, None)
        else:  # whole: long lines are left to the terminal (or a pager) to wrap
            console.print(render.approval_view(request), soft_wrap=True, end="")
        return 0
    rows = _store(args).list_approvals(None if args.all else "pending")
    requests = [public(r) for r in rows]
    _emit(args, console, requests, render.approvals_table(requests))
    if not args.json:
        console.print(render.approvals_hint(args.db if args.db_given else None, requests),
                      soft_wrap=True)
    return 0


def _answer(args: argparse.Namespace, console: Console, answer: str, value: Any = None) -> int:
    # The CLI never writes the audit: it writes the answer into the pending request, and the
    # broker (now, or when it next opens) audits and applies it.
    request = answer_in_store(_store(args), args.id, answer, who=f"cli:{getpass.getuser()}",
                              now=time.time(), scope=getattr(args, "scope", None), value=value,
                              by_prefix=True)
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
    value: Any = args.value
    if not args.text:
        try:
            value = json.loads(args.value)
        except ValueError:
            value = args.value  # not JSON: the text itself
    return _answer(args, console, "answer", value)


def cmd_web(args: argparse.Namespace, console: Console) -> int:
    from broker.providers.web import serve

    api = StoreApprovals(_store(args), time.time)

    async def run() -> None:
        async with trio.open_nursery() as nursery:
            url = await nursery.start(partial(serve, api, port=args.port,
                                              who=f"web:{getpass.getuser()}"))
            if args.json:
                print(json.dumps({"url": url}), flush=True)
            else:
                console.print(f"approvals page: {url} (Ctrl-C to stop)")

    with contextlib.suppress(KeyboardInterrupt):
        trio.run(run)
    return 0


def _control(args: argparse.Namespace, console: Console, verb: str) -> int:
    """Leave a request for the broker that holds the store; it applies it within a moment
    (or, if none runs now, when one next opens the store, before any process steps)."""
    store = _store(args)
    store.get_process(args.pid)  # NotFound for an unknown pid
    request = store.add_control(verb, args.pid)
    deadline = time.monotonic() + args.wait
    while time.monotonic() < deadline and not store.control_done(request):
        time.sleep(0.05)
    applied = store.control_done(request)
    row = store.get_process(args.pid)
    result = {"pid": args.pid, "verb": verb, "applied": applied, "state": row["state"]}
    if args.json:
        _emit(args, console, result, None)
    else:
        note = "" if applied else " (queued: no broker holds the store; applied when one opens)"
        console.print(f"{verb} {args.pid}: {row['state']}{note}")
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
            console.print(part)
    return 0


def cmd_checkpoints(args: argparse.Namespace, console: Console) -> int:
    store = _store(args)
    store.get_process(args.pid)  # NotFound for an unknown pid
    kept = [summary(c) for c in store.checkpoint_log(args.pid)]
    _emit(args, console, kept, render.checkpoints_table(kept))
    return 0


def cmd_fork(args: argparse.Namespace, console: Console) -> int:
    """Leave a fork request for the broker that holds the store (as for pause): it forks
    from the checkpoint (the latest unless one is named) and says the new pid."""
    store = _store(args)
    store.get_process(args.pid)  # NotFound for an unknown pid
    if args.checkpoint is not None and store.logged_checkpoint(args.pid, args.checkpoint) is None:
        raise NotFound(f"process {args.pid} has no kept checkpoint {args.checkpoint} "
                       f"(see `libos checkpoints {args.pid}`)")
    request = store.add_control("fork", args.pid, {"checkpoint": args.checkpoint})
    deadline = time.monotonic() + args.wait
    result = store.control_result(request)
    while result is None and time.monotonic() < deadline:
        time.sleep(0.05)
        result = store.control_result(request)
    failed = isinstance(result, dict) and "error" in result
    if args.json:
        _emit(args, console, {"source": args.pid, "checkpoint": args.checkpoint,
                              "applied": result is not None, **(result or {})}, None)
    elif result is None:
        console.print(f"fork {args.pid}: queued (no broker holds the store; applied when one "
                      "opens)")
    elif failed:
        console.print(f"fork {args.pid}: [red]{result['error']}[/red]",
                      render.inert(result.get("message", ""), 300))
    else:
        console.print(f"fork {args.pid}: new process {result['pid']}")
    return 2 if failed else 0


def cmd_pause(args: argparse.Namespace, console: Console) -> int:
    return _control(args, console, "pause")


def cmd_kill(args: argparse.Namespace, console: Console) -> int:
    return _control(args, console, "kill")


def cmd_resume(args: argparse.Namespace, console: Console) -> int:
    if args.pid is not None:
        return _control(args, console, "resume")
    if not args.all:
        raise InvalidArgument("resume needs a PID or --all")
    from broker.resume_all import resume_all

    outcome = trio.run(partial(resume_all, Path(args.db), args.seconds, console,
                               quiet=args.json, db_shown=args.db if args.db_given else None))
    if args.json:
        _emit(args, console, outcome, None)
    return 0


def cmd_bench(args: argparse.Namespace, console: Console) -> int:
    from broker import benchmarks

    return benchmarks.run(Path(args.out) if args.out else None, args.only or ())


def cmd_run(args: argparse.Namespace, console: Console) -> int:
    from broker.run import exit_code, run_agent

    # With --json, stdout holds only the final status; the transcript goes to stderr.
    shown = Console(stderr=True, highlight=False, soft_wrap=False) if args.json else console
    status = trio.run(partial(run_agent, Path(args.db), args.image, args.goal, args.caps,
                              shown, timeout=args.timeout or None))
    if args.json:
        _emit(args, console, status, None)
    return exit_code(status)


def cmd_mcp(args: argparse.Namespace, console: Console) -> int:
    from broker.mcp_server import serve_stdio

    return trio.run(partial(serve_stdio, Path(args.db), args.image, args.caps))


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


def build_parser() -> argparse.ArgumentParser:
    common = Parser(add_help=False)
    common.add_argument("--db", default=argparse.SUPPRESS,
                        help=f"the store (default: ./{DEFAULT_DB})")
    common.add_argument("--json", action="store_true", default=argparse.SUPPRESS,
                        help="machine-readable output (errors too: {\"error\", \"message\"} "
                        "on stdout)")
    parser = Parser(prog="libos", parents=[common],
                    description="capability-controlled agent runtime")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def command(name: str, fn: Callable[[argparse.Namespace, Console], int],
                help_: str) -> argparse.ArgumentParser:
        p = sub.add_parser(name, parents=[common], help=help_, description=help_)
        p.set_defaults(fn=fn)
        return p

    def request_id(p: argparse.ArgumentParser, dest: str = "id") -> None:
        p.add_argument(dest, metavar="ID", help="a request's id as `libos approvals` shows "
                       "it, or a prefix of it that no other request has")

    def wait(p: argparse.ArgumentParser) -> None:
        p.add_argument("--wait", type=float, default=3.0, metavar="S",
                       help="seconds to wait for the broker to apply it (default: 3)")

    command("demo", cmd_demo, "run the demo: spawn, deny, object, verified audit")
    command("ps", cmd_ps, "the process tree with states")
    audit = command("audit", cmd_audit, "the audit chain (--verify proves it)")
    audit.add_argument("--verify", action="store_true",
                       help="recompute the hash chain and check it and what it vouches for")
    audit.add_argument("--pid", type=int, help="only this process's records")
    audit.add_argument("--limit", type=int, default=0, metavar="N",
                       help="only the last N records (default: 0, all)")
    caps = command("caps", cmd_caps, "a process's capabilities")
    caps.add_argument("pid", type=int, help="the process")
    approvals = command("approvals", cmd_approvals,
                        "pending approval requests and questions (show ID: one, whole)")
    approvals.add_argument("--all", action="store_true", help="answered ones too")
    shows = approvals.add_subparsers(dest="approvals_command", metavar="show")
    show = shows.add_parser("show", parents=[common], help="one request, whole, with the "
                            "hash of the arguments a grant binds to")
    request_id(show, "show")
    approvals.set_defaults(show=None)
    approve = command("approve", cmd_approve,
                      "approve a request once (or --always: a standing capability)")
    request_id(approve)
    approve.add_argument("--always", action="store_true",
                         help="a standing grant (for the resource, or --scope)")
    approve.add_argument("--scope", help="with --always: a wider scope, within the asking one")
    deny = command("deny", cmd_deny, "deny a request (or --always: a deny rule)")
    request_id(deny)
    deny.add_argument("--always", action="store_true",
                      help="a standing deny rule (for the resource, or --scope)")
    deny.add_argument("--scope", help="with --always: the scope the rule denies")
    answer = command("answer", cmd_answer, "answer a question (VALUE is JSON, else text)")
    request_id(answer)
    answer.add_argument("value", help="the answer: JSON, else taken as text")
    answer.add_argument("--text", action="store_true", help="VALUE is text, even if it is JSON")
    web = command("web", cmd_web, "serve the approvals page on 127.0.0.1")
    web.add_argument("--port", type=int, default=DEFAULT_PORT,
                     help=f"the port on 127.0.0.1 (default: {DEFAULT_PORT}; 0: any free one)")
    command("images", cmd_images, "the images in the store, every version, and their origin")
    image = command("image", cmd_image, "one image: tools, needs, restrictions, origin")
    image_sub = image.add_subparsers(dest="image_command", required=True, metavar="show")
    image_show = image_sub.add_parser("show", parents=[common], help="an image whole (the "
                                      "newest version unless NAME@VERSION)")
    image_show.add_argument("name", metavar="NAME[@VERSION]",
                            help="an image's name, and a version if not the newest")
    checkpoints = command("checkpoints", cmd_checkpoints,
                          "the checkpoints a process keeps, to fork from")
    checkpoints.add_argument("pid", type=int, help="the process")
    fork = command("fork", cmd_fork, "fork a process from its latest checkpoint, or a kept one")
    fork.add_argument("pid", type=int, help="the process to fork")
    fork.add_argument("--checkpoint", type=int, help="a kept checkpoint's id (libos checkpoints)")
    wait(fork)
    for name, fn, help_ in (("pause", cmd_pause, "pause a process at its next step boundary"),
                            ("kill", cmd_kill, "kill a process and its descendants")):
        control = command(name, fn, help_)
        control.add_argument("pid", type=int, help="the process (its descendants too)")
        wait(control)
    resume = command("resume", cmd_resume,
                     "resume a paused process, or --all: recover and run every process")
    resume.add_argument("pid", type=int, nargs="?", help="the paused process")
    resume.add_argument("--all", action="store_true",
                        help="be the broker: recover every process that was running and run "
                        "them; say what was resumed and how each ended")
    wait(resume)
    resume.add_argument("--for", dest="seconds", type=float, default=0, metavar="S",
                        help="with --all: stop after this many seconds (default: 0, until "
                        "all have ended)")
    run = command("run", cmd_run, "run an agent under its image's model planner")
    run.add_argument("image", help="an image in the store, or a JSON file holding one")
    run.add_argument("--goal", required=True, help="the first user message")
    run.add_argument("--caps", nargs="+", help="grant these: kind:scope:rights, or a JSON "
                     "object (default: the image's needs)")
    run.add_argument("--timeout", type=float, default=0, metavar="S",
                     help="seconds before the process is killed (default: 0, none)")
    mcp = command("mcp", cmd_mcp, "serve a process's tool table over MCP (stdio)")
    mcp.add_argument("--image", required=True,
                     help="an image in the store, or a JSON file holding one")
    mcp.add_argument("--caps", nargs="+", help="grant these: kind:scope:rights, or a JSON "
                     "object (default: the image's needs)")
    setup = command("setup", cmd_setup, "fetch Pyodide (npm registry) for Python tools, "
                    "make its snapshot; $LIBOS_PYODIDE_DIR overrides where it goes")
    setup.add_argument("--force", action="store_true", help="fetch and snapshot again")
    bench = command("bench", cmd_bench, "run the benchmarks (python -m bench)")
    bench.add_argument("--out", help="write JSON results here (default: bench/results/latest.json "
                       "in a source checkout, ./libos-bench.json otherwise)")
    bench.add_argument("--only", action="append", metavar="SUITE",
                       help="run only this suite (e.g. kernel_bench; may be repeated)")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    try:
        args = build_parser().parse_args(argv)
    except UsageError as exc:
        return report_usage(exc, argv)
    args.db_given = hasattr(args, "db")
    if not args.db_given:
        args.db = DEFAULT_DB
    args.json = getattr(args, "json", False)
    quiet_logging()
    console = Console(highlight=False, soft_wrap=False)
    try:
        with typed_errors():
            return int(args.fn(args, console))
    except LibosError as exc:
        return report(exc, as_json=args.json)
    except KeyboardInterrupt:
        return EXIT_INTERRUPTED
    except Exception as exc:
        return report_internal(exc, as_json=args.json)


if __name__ == "__main__":
    sys.exit(main())
