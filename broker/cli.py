"""The `libos` command: tables for people, `--json` for machines, `--db PATH` everywhere."""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import trio
from rich.console import Console

from broker import render
from broker.errors import LibosError
from broker.store import SQLiteStore, verify_chain

DEFAULT_DB = "libos.db"


def _store(args: argparse.Namespace) -> SQLiteStore:
    path = Path(args.db)
    if not path.exists():
        raise LibosError(f"no store at {path} (use --db PATH)")
    return SQLiteStore(path, writer=False)


def _emit(args: argparse.Namespace, console: Console, data: Any, table: Any) -> None:
    if args.json:
        print(json.dumps(data, default=repr, ensure_ascii=False, indent=2))
    else:
        console.print(table)


def cmd_demo(args: argparse.Namespace, console: Console) -> int:
    from broker.demo import run_demo

    if args.db_given:
        db = Path(args.db)
        if db.exists():
            raise LibosError(f"{db} exists; the demo wants a fresh store")
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
        count, problems = verify_chain(store.audit_records())
        if args.json:
            print(json.dumps({"records": count, "ok": not problems,
                              "problems": [str(p) for p in problems]}, indent=2))
        else:
            console.print(render.verdict(count, [str(p) for p in problems]))
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


def cmd_bench(args: argparse.Namespace, console: Console) -> int:
    try:
        from bench.__main__ import main as bench_main
    except ImportError:
        raise LibosError("the benchmarks live in the source checkout: run from its root") from None
    return bench_main(["--json-out", args.out] if args.out else [])


def build_parser() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--db", default=argparse.SUPPRESS,
                        help=f"the store (default: ./{DEFAULT_DB})")
    common.add_argument("--json", action="store_true", default=argparse.SUPPRESS,
                        help="machine-readable output")
    parser = argparse.ArgumentParser(prog="libos", parents=[common],
                                     description="capability-controlled agent runtime")
    sub = parser.add_subparsers(dest="command", required=True)

    def command(name: str, fn: Callable[[argparse.Namespace, Console], int],
                help_: str) -> argparse.ArgumentParser:
        p = sub.add_parser(name, parents=[common], help=help_, description=help_)
        p.set_defaults(fn=fn)
        return p

    command("demo", cmd_demo, "run the demo: spawn, deny, object, verified audit")
    command("ps", cmd_ps, "the process tree with states")
    audit = command("audit", cmd_audit, "the audit chain (--verify proves it)")
    audit.add_argument("--verify", action="store_true")
    audit.add_argument("--pid", type=int)
    audit.add_argument("--limit", type=int, default=0, help="only the last N records")
    caps = command("caps", cmd_caps, "a process's capabilities")
    caps.add_argument("pid", type=int)
    bench = command("bench", cmd_bench, "run the benchmarks (python -m bench)")
    bench.add_argument("--out", help="write JSON results here")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    args.db_given = hasattr(args, "db")
    if not args.db_given:
        args.db = DEFAULT_DB
    args.json = getattr(args, "json", False)
    console = Console(highlight=False, soft_wrap=False)
    try:
        return int(args.fn(args, console))
    except LibosError as exc:
        Console(stderr=True).print(f"[red]{exc.code}[/red]: ", render.inert(exc.message, 500))
        return 2


if __name__ == "__main__":
    sys.exit(main())
