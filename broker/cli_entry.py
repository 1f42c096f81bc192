"""The `libos` script's entry point, apart from the CLI itself: the script imports this module
(the `broker` package and its errors, nothing more) and calls `entry`, which imports the CLI
(a second of trio, rich and the store on a slow machine) inside its own handling of Ctrl-C.
So a Ctrl-C at any point after Python starts the script ends it with 130, quietly, as one
during a command does (`broker.cli.main`), never with a traceback of the import it cut."""

from __future__ import annotations

EXIT_INTERRUPTED = 130  # (`broker.cli_errors.EXIT_INTERRUPTED`, not imported: it is the CLI)


def entry() -> int:
    try:
        from broker import cli

        return cli.entry()
    except KeyboardInterrupt:
        return EXIT_INTERRUPTED  # (a Pyodide `libos demo` started meanwhile: `atexit`)
