// Entry point of the Pyodide registration checker: it parses and compiles a Python tool in
// Pyodide's own Python (never running it) and says whether it defines run(args, libos).
import { serve } from "./host.ts";

await serve("check");
