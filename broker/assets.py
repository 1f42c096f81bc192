"""Where the files libos reads at run time, besides its Python modules, are found.

They live at the top of the source tree, beside the packages: `ts-runtime/` (the TypeScript
runtime and the Pyodide host), `wasm-tools/` (the WASM guest library and the example tools) and
`bench/` (the benchmark suites, which shipped code runs as a child process, never imports).
The build (setup.py) maps each into the package as `broker/_assets/<name, - as _>`, so a wheel
carries them. One lookup serves every way libos runs: the package's own copy when the build put
one there (a wheel, an sdist's wheel, `pip install .`), else the source tree this package is
imported from (an editable install, or the checkout on sys.path).
"""

from __future__ import annotations

from pathlib import Path

ASSETS = ("ts-runtime", "wasm-tools", "bench")
INSTALLED = Path(__file__).resolve().parent / "_assets"
CHECKOUT = Path(__file__).resolve().parent.parent


def installed_name(name: str) -> str:
    """The directory's name inside the package (setup.py maps by the same rule)."""
    return name.replace("-", "_")


def _candidates(name: str) -> tuple[Path, ...]:
    if name not in ASSETS:
        raise ValueError(f"{name!r} is not one of libos's run-time directories {ASSETS}")
    found = [INSTALLED / installed_name(name)]
    # A source tree, not a site-packages that happens to hold a directory of that name.
    if (CHECKOUT / "pyproject.toml").is_file():
        found.append(CHECKOUT / name)
    return tuple(found)


def find_asset_dir(name: str) -> Path | None:
    """The directory `name` (one of ASSETS) as this libos carries it, or None."""
    return next((path for path in _candidates(name) if path.is_dir()), None)


def asset_dir(name: str) -> Path:
    """The directory `name`: where it is, else where an installed package would have it (so
    a module can name its files at import time; a missing file then fails where it is read).
    """
    return find_asset_dir(name) or _candidates(name)[0]

