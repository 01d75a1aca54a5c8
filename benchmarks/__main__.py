"""Run benchmarks by name; each writes its own section of benchmarks/RESULTS.md.

    .venv/bin/python -m benchmarks                 # list them
    .venv/bin/python -m benchmarks score vocab     # run these, with their default arguments

Extra arguments go to a single benchmark: `.venv/bin/python -m benchmarks.bench_vocab --bytes 20000`.
"""

from __future__ import annotations

import importlib
import pkgutil
import sys
from pathlib import Path


def available() -> list[str]:
    here = Path(__file__).parent
    return sorted(
        m.name.removeprefix("bench_")
        for m in pkgutil.iter_modules([str(here)])
        if m.name.startswith("bench_")
    )


def main(argv: list[str]) -> int:
    names = available()
    if not argv:
        print("benchmarks:", ", ".join(names))
        return 0
    unknown = [n for n in argv if n not in names]
    if unknown:
        print(f"unknown benchmark(s) {unknown}; choose from {names}", file=sys.stderr)
        return 2
    for name in argv:
        print(f"== {name}")
        module = importlib.import_module(f"benchmarks.bench_{name}")
        saved, sys.argv = sys.argv, [module.__file__]
        try:
            module.main()
        finally:
            sys.argv = saved
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
