// A hostile stand-in for ts-runtime/main.ts, for tests/sandboxes/test_deno_attacks.py: it
// speaks the frame protocol correctly for the tools "echo" and "sys", and for every tool named
// "forge_*" writes what a compromised sandbox could write to its stdout. The broker must
// refuse each forgery, kill this sandbox, and attribute nothing to any other call or process.

import { DEFAULT_LIMITS, encodeFrame, FrameDecoder } from "../../ts-runtime/msgpack.ts";

const out = Deno.stdout;
function raw(bytes: Uint8Array): void {
  let off = 0;
  while (off < bytes.length) off += out.writeSync(bytes.subarray(off));
}
function send(msg: Record<string, unknown>): void {
  raw(encodeFrame(msg));
}

function stderr(bytes: number): void {
  const chunk = new TextEncoder().encode("e".repeat(1 << 16));
  for (let n = 0; n < bytes; n += chunk.length) Deno.stderr.writeSync(chunk);
}

const pending = new Map<string, (v: unknown) => void>();

async function call(id: number, tool: string, args: unknown): Promise<void> {
  switch (tool) {
    case "echo":
      return send({ t: "result", id, value: args });
    case "sys": {
      const got = await new Promise((resolve) => {
        pending.set(`${id}/0`, resolve);
        send({ t: "syscall", id, seq: 0, name: "clock.now", args: {} });
      });
      return send({ t: "result", id, value: got });
    }
    case "forge_other_id":
      // a syscall in the name of a call that is not in flight here
      for (const other of [id + 1, id + 1000, 0, 1]) {
        if (other === id) continue;
        send({ t: "syscall", id: other, seq: 0, name: "fs.write", args: { path: "/data/forged", data: "x" } });
      }
      return;
    case "forge_stale_id":
      // a syscall in the name of this sandbox's previous call, which has ended
      return send({ t: "syscall", id: id - 1, seq: 0, name: "fs.write", args: { path: "/data/forged", data: "x" } });
    case "forge_result_other":
      return send({ t: "result", id: id + 7, value: "not mine" });
    case "forge_log_other":
      return send({ t: "log", id: id + 1, level: "info", text: "forged log" });
    case "forge_garbage":
      return raw(new TextEncoder().encode("root:x:0:0:root:/root:/bin/bash\n"));
    case "forge_huge_length":
      return raw(new Uint8Array([0xff, 0xff, 0xff, 0xff]));
    case "forge_hello":
      return send({ t: "hello", v: 1, kind: "deno" });
    case "forge_sysret":
      return send({ t: "sysret", id, seq: 0, ok: true, value: 1 });
    case "forge_kind":
      return send({ t: "error", id, code: "PWNED", message: "unknown code" });
    case "claim_CANCELLED":
    case "claim_PROTOCOL_ERROR":
    case "claim_SANDBOX_CRASHED":
      // a well-formed error frame claiming a code only the broker may give
      return send({ t: "error", id, code: tool.slice(6), message: "it was not me" });
    case "forge_finish_pending":
      // a blocking syscall is still unanswered when the result comes
      send({ t: "syscall", id, seq: 0, name: "clock.sleep", args: { seconds: 1 } });
      return send({ t: "result", id, value: "before the answer" });
    case "forge_seq_replay":
      send({ t: "syscall", id, seq: 5, name: "clock.now", args: {} });
      return send({ t: "syscall", id, seq: 5, name: "clock.now", args: {} });
    case "forge_idle":
      send({ t: "result", id, value: "fine" });
      setTimeout(() => send({ t: "log", id, level: "info", text: "after the call" }), 50);
      return;
    case "forge_stderr_flood":
      // output the broker reads, not on the channel: 4 MiB on stderr, then a good result
      stderr(4 << 20);
      return send({ t: "result", id, value: "fine" });
    case "forge_stderr_idle":
      // the same once the call has ended, while the sandbox is idle
      send({ t: "result", id, value: "fine" });
      setTimeout(() => stderr(4 << 20), 50);
      return;
    case "forge_many_items": {
      // a syscall of 300,000 empty maps (a few shared arrays: nothing to the sandbox), past
      // the broker's count of containers and values in one frame
      const maps = new Array(100000).fill({});
      const args = { a: [maps, maps, maps] };
      const loose = { ...DEFAULT_LIMITS, max_items: 1e9 };
      return raw(encodeFrame({ t: "syscall", id, seq: 0, name: "clock.now", args }, loose));
    }
    case "forge_partial_after":
      // its result, and in the same write the start of a frame nobody asked for
      return raw(new Uint8Array([...encodeFrame({ t: "result", id, value: "fine" }),
        ...encodeFrame({ t: "log", id, level: "info", text: "staged" }).subarray(0, 6)]));
    case "forge_log_level":
      // a log line of no text whose level is 1 MiB: charged as an empty line, decoded whole
      return send({ t: "log", id, level: "x".repeat(1 << 20), text: "" });
    case "forge_truncated":
      raw(encodeFrame({ t: "result", id, value: "x".repeat(100) }).subarray(0, 20));
      return Deno.exit(0);
    default:
      return send({ t: "error", id, code: "NOT_FOUND", message: `no tool ${tool}` });
  }
}

send({ t: "hello", v: 1, kind: "deno" });
const dec = new FrameDecoder();
const buf = new Uint8Array(65536);
while (true) {
  const n = await Deno.stdin.read(buf);
  if (n === null) break;
  dec.feed(buf.slice(0, n));
  for (let d = dec.next(); d !== null; d = dec.next()) {
    const m = d.value as Record<string, unknown>;
    if (m.t === "call") call(m.id as number, m.tool as string, m.args);
    else if (m.t === "check") { // a registration
      if (m.tool === "forge_stderr_check") stderr(4 << 20); // a check has no output cap
      send({ t: "result", id: m.id, value: { entry: "run" } });
    }
    else if (m.t === "sysret") {
      const key = `${m.id}/${m.seq}`;
      pending.get(key)?.(m.value);
      pending.delete(key);
    }
  }
}
