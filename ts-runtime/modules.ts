// The runtime's own modules, as namespaces, for lockdown to harden. A tool can import any
// module the sandbox has already loaded by its file: URL (Deno asks no permission for a
// module it already holds, and a stack trace names the runtime's directory), so everything
// these modules export is frozen with the built-ins: a class prototype left open (say,
// FrameDecoder's) would let one call rewrite the frames of the next.

import * as errors from "./errors.ts";
import * as hide from "./hide.ts";
import * as libos from "./libos.ts";
import * as lockdown from "./lockdown.ts";
import * as messages from "./messages.ts";
import * as modules from "./modules.ts";
import * as msgpack from "./msgpack.ts";
import * as syscalls from "./syscalls.gen.ts";

export const RUNTIME_MODULES: readonly object[] = Object.freeze([
  errors, hide, libos, lockdown, messages, modules, msgpack, syscalls,
]);
