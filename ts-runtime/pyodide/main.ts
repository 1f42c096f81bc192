// Entry point of a Pyodide sandbox (see host.ts); exports nothing.
import { serve } from "./host.ts";

await serve("run");
