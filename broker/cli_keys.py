"""`libos keys`: the audit keys this user signs with and trusts.

Whose signatures `libos audit --verify` counts is the verifier's decision, made on its own
host and never read from the store: this user's own key, and the public keys it trusts
(`libos keys trust FILE`, kept in `~/.config/libos/trusted/`, beside the key)."""

from __future__ import annotations

import argparse
import json
from typing import Any

from broker.store import keys, signing


def cmd_keys(args: argparse.Namespace, console: Any) -> int:
    if args.keys_command == "trust":
        key, where = keys.trust(args.file)
        return _say(args, console, {"trusted": key, "fingerprint": signing.fingerprint(key),
                                    "file": str(where)},
                    f"trusting key {signing.fingerprint(key)} ({where})")
    if args.keys_command == "untrust":
        where = keys.untrust(args.fingerprint)
        return _say(args, console, {"untrusted": args.fingerprint, "file": str(where)},
                    f"no longer trusting key {args.fingerprint}")
    own = keys.own_public()
    trusted = keys.trusted_keys()
    data = {"own": None if own is None else {"key": own, "fingerprint": signing.fingerprint(own),
                                             "public_file": str(keys.public_path(
                                                 keys.key_path()))},
            "trusted": [{"key": k, "fingerprint": signing.fingerprint(k), "file": str(p)}
                        for k, p in trusted.items()]}
    lines = [f"own key: {signing.fingerprint(own)} (give verifiers "
             f"{keys.public_path(keys.key_path())})" if own else
             "own key: none yet (a broker makes it on first use)"]
    lines += [f"trusted: {signing.fingerprint(k)}" for k in trusted]
    return _say(args, console, data, "\n".join(lines))


def _say(args: argparse.Namespace, console: Any, data: dict[str, Any], text: str) -> int:
    if args.json:
        print(json.dumps(data, ensure_ascii=True, indent=2))
    else:
        console.print(text, markup=False)
    return 0
