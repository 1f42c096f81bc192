"""The build's one job beyond pyproject.toml: map the run-time directories that live at the top
of the source tree into the package, so that a wheel carries them.

`ts-runtime/` (the TypeScript runtime and the Pyodide host), `wasm-tools/` (the WASM guest
library and the example tools) and `bench/` (the benchmark suites) stay where they are; each is
installed whole as `broker/_assets/<name with - as _>/`, where `broker.assets` looks for it
first (an editable install finds it in the source tree instead). MANIFEST.in puts them in the
sdist, so that a wheel built from the sdist carries them too.
"""

from pathlib import Path

from setuptools import find_packages, setup

ASSETS = ("ts-runtime", "wasm-tools", "bench")  # the same as broker.assets.ASSETS
# Every kind of file in those trees (a test fails when a tracked file is not in the wheel).
FILES = ["*.ts", "*.js", "*.py", "*.wat", "*.md"]
NOT_SHIPPED = {"__pycache__", "node_modules", "results"}  # bench/results: a run's output


def asset_packages() -> dict[str, str]:
    """Package → source directory, for each asset directory and every directory in it (each
    directory is a package to setuptools, as it is to Python)."""
    mapping = {}
    for name in ASSETS:
        root = Path(name)
        for directory in sorted([root, *root.rglob("*")]):
            parts = directory.relative_to(root).parts
            if directory.is_dir() and not NOT_SHIPPED.intersection(parts):
                package = ".".join(("broker._assets", name.replace("-", "_"), *parts))
                mapping[package] = directory.as_posix()
    return mapping


ASSET_PACKAGES = asset_packages()

setup(
    packages=[*find_packages(include=["broker", "broker.*", "sandboxes", "sandboxes.*"]),
              *ASSET_PACKAGES],
    package_dir=ASSET_PACKAGES,
    package_data={"broker": ["store/migrations/*/*.sql"], **dict.fromkeys(ASSET_PACKAGES, FILES)},
)
