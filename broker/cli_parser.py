"""The `libos` command line: every command and option, each with its help text and its
default shown. `broker.cli` runs the commands."""

from __future__ import annotations

import argparse
import math
from collections.abc import Callable, Mapping
from typing import Any

from broker.cli_errors import Parser

DEFAULT_DB = "libos.db"
DEFAULT_PORT = 8765
Handler = Callable[[argparse.Namespace, Any], int]


def seconds(text: str) -> float:
    """A time in seconds: a finite number, 0 or more (NaN passes no comparison; it reached
    trio's sleep after a broker had run)."""
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not math.isfinite(value) or value < 0:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of seconds (0 or more)")
    return value


def count(text: str) -> int:
    """A number of things: a whole number, 0 or more (a negative one sliced from the other
    end: `--limit -5` listed all but the first five)."""
    try:
        value = int(text)
    except ValueError:
        value = -1
    if value < 0:
        raise argparse.ArgumentTypeError(f"{text!r} is not a count (a whole number, 0 or more)")
    return value


def build_parser(handlers: Mapping[str, Handler]) -> argparse.ArgumentParser:
    """The `libos` command line; `handlers` runs each command (by its name)."""
    common = Parser(add_help=False)
    common.add_argument("--db", default=argparse.SUPPRESS,
                        help=f"the store (default: ./{DEFAULT_DB})")
    common.add_argument("--json", action="store_true", default=argparse.SUPPRESS,
                        help="machine-readable output (errors too: {\"error\", \"message\"} "
                        "on stdout)")
    parser = Parser(prog="libos", parents=[common],
                    description="capability-controlled agent runtime")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def command(name: str, help_: str) -> argparse.ArgumentParser:
        p = sub.add_parser(name, parents=[common], help=help_, description=help_)
        p.set_defaults(fn=handlers[name])
        return p

    def request_id(p: argparse.ArgumentParser, dest: str = "id") -> None:
        p.add_argument(dest, metavar="ID", help="a request's id as `libos approvals` shows "
                       "it, or a prefix of it that no other request has")

    def answers(p: argparse.ArgumentParser) -> None:
        request_id(p)
        p.add_argument("--shown", metavar="DIGEST", help="the request as `libos approvals show`"
                       " showed it (the digest in the commands it prints): answered only if"
                       " it is still so, else CONFLICT and nothing written")

    def wait(p: argparse.ArgumentParser) -> None:
        p.add_argument("--wait", type=seconds, default=3.0, metavar="S",
                       help="seconds to wait for the broker to apply it (default: 3)")

    command("demo", "run the demo: spawn, deny, object, verified audit")
    command("ps", "the process tree with states")
    audit = command("audit", "the audit chain (--verify proves it)")
    audit.add_argument("--verify", action="store_true",
                       help="check the chain and its signed anchor (of the store, or --from)")
    audit.add_argument("--from", dest="source", metavar="FILE",
                       help="with --verify: an exported audit instead of the store")
    audit.add_argument("--public-key", metavar="KEY",
                       help="the signer's public key, alone (PEM or hex; default: the "
                       "local key's and those `libos keys trust` added)")
    audit.add_argument("--trust", metavar="FILE", action="append", default=[],
                       help="with --verify: trust this public key too (PEM or hex; may be "
                       "given again; see `libos keys trust`)")
    audit.add_argument("--export", metavar="FILE",
                       help="write the records and the signed anchor to FILE (JSON Lines)")
    audit.add_argument("--rotate-key", action="store_true",
                       help="replace the signing key with a new one it endorses")
    audit.add_argument("--key", metavar="PATH",
                       help="with --rotate-key: the private key (default: $LIBOS_AUDIT_KEY, "
                       "else ~/.config/libos/audit.key)")
    audit.add_argument("--pid", type=int, help="only this process's records")
    audit.add_argument("--limit", type=count, default=0, metavar="N",
                       help="only the last N records (default: 0, all)")
    keys = command("keys", "the audit keys: this user's own, and the public keys it trusts")
    keys.set_defaults(keys_command="list")
    keys_sub = keys.add_subparsers(dest="keys_command", metavar="trust|untrust|list")
    keys_sub.add_parser("list", parents=[common], help="this user's key and the keys it trusts")
    trust = keys_sub.add_parser("trust", parents=[common], help="count signatures by this "
                                "public key (another broker host's audit.key.pub) when verifying")
    trust.add_argument("file", metavar="FILE", help="the public key (PEM or hex)")
    untrust = keys_sub.add_parser("untrust", parents=[common], help="stop trusting a key")
    untrust.add_argument("fingerprint", metavar="FINGERPRINT",
                         help="its fingerprint (16 hex digits, as `libos keys` shows it)")
    caps = command("caps", "a process's capabilities")
    caps.add_argument("pid", type=int, help="the process")
    approvals = command("approvals",
                        "pending approval requests and questions (show ID: one, whole)")
    approvals.add_argument("--all", action="store_true", help="answered ones too")
    shows = approvals.add_subparsers(dest="approvals_command", metavar="show")
    show = shows.add_parser("show", parents=[common], help="one request, whole, with the "
                            "hash of the arguments a grant binds to")
    request_id(show, "show")
    approvals.set_defaults(show=None)
    approve = command("approve", "approve a request once (or --always: a standing capability)")
    answers(approve)
    approve.add_argument("--always", action="store_true",
                         help="a standing grant (for the resource, or --scope)")
    approve.add_argument("--scope", help="with --always: a wider scope, within the asking one")
    deny = command("deny", "deny a request (or --always: a deny rule)")
    answers(deny)
    deny.add_argument("--always", action="store_true",
                      help="a standing deny rule (for the resource, or --scope)")
    deny.add_argument("--scope", help="with --always: the scope the rule denies")
    answer = command("answer", "answer a question (VALUE is JSON, else text)")
    answers(answer)
    answer.add_argument("value", help="the answer: JSON, else taken as text")
    answer.add_argument("--text", action="store_true", help="VALUE is text, even if it is JSON")
    web = command("web", "serve the approvals page on 127.0.0.1")
    web.add_argument("--port", type=int, default=DEFAULT_PORT,
                     help=f"the port on 127.0.0.1 (default: {DEFAULT_PORT}; 0: any free one)")
    command("images", "the images in the store, every version, and their origin")
    image = command("image", "one image: tools, needs, restrictions, origin")
    image_sub = image.add_subparsers(dest="image_command", required=True, metavar="show")
    image_show = image_sub.add_parser("show", parents=[common], help="an image whole (the "
                                      "newest version unless NAME@VERSION)")
    image_show.add_argument("name", metavar="NAME[@VERSION]",
                            help="an image's name, and a version if not the newest")
    checkpoints = command("checkpoints", "the checkpoints a process keeps, to fork from")
    checkpoints.add_argument("pid", type=int, help="the process")
    fork = command("fork", "fork a process from its latest checkpoint, or a kept one")
    fork.add_argument("pid", type=int, help="the process to fork")
    fork.add_argument("--checkpoint", type=int, help="a kept checkpoint's id (libos checkpoints)")
    wait(fork)
    for name, help_ in (("pause", "pause a process at its next step boundary"),
                        ("kill", "kill a process and its descendants")):
        control = command(name, help_)
        control.add_argument("pid", type=int, help="the process (its descendants too)")
        wait(control)
    resume = command("resume", "resume a paused process, or --all: recover and run every process")
    resume.add_argument("pid", type=int, nargs="?", help="the paused process")
    resume.add_argument("--all", action="store_true",
                        help="be the broker: recover every process that was running and run "
                        "them; say what was resumed and how each ended")
    wait(resume)
    resume.add_argument("--for", dest="seconds", type=seconds, default=0, metavar="S",
                        help="with --all: stop after this many seconds (default: 0, until "
                        "all have ended)")
    serve = command("serve", "be one of many brokers over a PostgreSQL store (--db "
                    "postgresql://...): take work, run it, until SIGTERM")
    serve.add_argument("--broker", metavar="ID", help="this broker's identity, unique among "
                       "those sharing the store (default: host name and process id)")
    serve.add_argument("--lease", type=seconds, default=5.0, metavar="S",
                       help="seconds a process's lease lasts unrenewed: how soon another "
                       "broker takes over from one that died (default: 5)")
    serve.add_argument("--for", dest="seconds", type=seconds, default=0, metavar="S",
                       help="stop after this many seconds (default: 0, until SIGTERM)")
    serve.add_argument("--until-idle", action="store_true",
                       help="stop once no live process is left in the store")
    run = command("run", "run an agent under its image's model planner")
    run.add_argument("image", help="an image in the store, or a JSON file holding one")
    run.add_argument("--goal", required=True, help="the first user message")
    run.add_argument("--caps", nargs="+", help="grant these: kind:scope:rights, or a JSON "
                     "object (default: the image's needs)")
    run.add_argument("--timeout", type=seconds, default=0, metavar="S",
                     help="seconds before the process is killed (default: 0, none)")
    mcp = command("mcp", "serve a process's tool table over MCP (stdio)")
    which = mcp.add_mutually_exclusive_group(required=True)
    which.add_argument("--image", help="serve a new process of this image: one in the "
                       "store, or a JSON file holding one")
    which.add_argument("--pid", type=int, help="serve this existing process (it lives on "
                       "when the session ends)")
    mcp.add_argument("--attach", action="append", default=[], metavar="NAME=COMMAND",
                     help="start this MCP server and give its tools to the image as NAME.TOOL "
                     "(capability mcp:NAME/TOOL:call); may be repeated")
    mcp.add_argument("--keep", action="store_true", help="leave the new process alive when "
                     "the session ends, to serve it again with --pid")
    mcp.add_argument("--caps", nargs="+", help="grant these: kind:scope:rights, or a JSON "
                     "object (default: the image's needs)")
    setup = command("setup", "fetch Pyodide (npm registry) for Python tools, "
                    "make its snapshot; $LIBOS_PYODIDE_DIR overrides where it goes")
    setup.add_argument("--force", action="store_true", help="fetch and snapshot again")
    bench = command("bench", "measure and write the benchmark report (python -m bench)")
    bench.add_argument("--quick", action="store_true", help="a shorter report (under a minute)")
    bench.add_argument("--out-dir", help="write the report here (default: bench/results/report "
                       "in a source checkout, ./libos-bench otherwise)")
    bench.add_argument("--section", action="append", metavar="SECTION",
                       help="measure only this section of the report (may be repeated)")
    bench.add_argument("--suites", action="store_true",
                       help="run every detailed suite instead of the report")
    bench.add_argument("--out", help="the suites' JSON results (default: bench/results/latest.json "
                       "in a source checkout, ./libos-bench.json otherwise)")
    bench.add_argument("--only", action="append", metavar="SUITE",
                       help="run only this suite (e.g. kernel_bench; may be repeated)")
    return parser
