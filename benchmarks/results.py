"""Write one benchmark's section of benchmarks/RESULTS.md without touching the others.

Each benchmark owns the text between `<!-- BEGIN name -->` and `<!-- END name -->`; the header with the
machine, library versions and date is refreshed on every write."""

from __future__ import annotations

import datetime
import os
import platform
import re
from pathlib import Path

RESULTS = Path(__file__).with_name("RESULTS.md")


def machine_header() -> str:
    import torch
    import transformers

    cpu = platform.processor() or platform.machine()
    return (
        "# Benchmark results\n\n"
        "Each section is written by the script it names; rerun that command to reproduce it. Ratios compare\n"
        "hf_coop against its baseline on the same work in the same run.\n\n"
        f"Last written {datetime.date.today().isoformat()} on {platform.system()} {cpu}, "
        f"{os.cpu_count()} cores, Python {platform.python_version()}, torch {torch.__version__}, "
        f"transformers {transformers.__version__}, torch threads {torch.get_num_threads()}.\n"
    )


def write_section(name: str, markdown: str, path: Path = RESULTS) -> None:
    """Replace (or append) the section `name` of RESULTS.md with `markdown`."""
    text = path.read_text(encoding="utf-8") if path.exists() else ""
    body = text.split("<!-- BEGIN ", 1)
    sections = "<!-- BEGIN " + body[1] if len(body) == 2 else ""
    block = f"<!-- BEGIN {name} -->\n{markdown.strip()}\n<!-- END {name} -->"
    pattern = re.compile(rf"<!-- BEGIN {re.escape(name)} -->.*?<!-- END {re.escape(name)} -->", re.S)
    sections = (
        pattern.sub(lambda _: block, sections)
        if pattern.search(sections)
        else (sections.rstrip() + "\n\n" + block).strip()
    )
    path.write_text(machine_header() + "\n" + sections + "\n", encoding="utf-8")
