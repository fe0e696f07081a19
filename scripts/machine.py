"""What machine a benchmark ran on, for the reports of the scripts beside this file."""

from __future__ import annotations

import platform
import subprocess


def cpu_name() -> str:
    """The CPU's model name from `lscpu`, else what `platform` knows."""
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True, check=True).stdout
        return next(line.split(":", 1)[1].strip() for line in out.splitlines() if line.startswith("Model name"))
    except (OSError, subprocess.CalledProcessError, StopIteration):
        return platform.processor() or "unknown CPU"


def machines(records: list[dict]) -> str:
    """Every machine `records` ran on: their `hardware` lines, sorted, joined by '; ' (a page or results file names
    them all, since a sweep or search extended later may have run elsewhere)."""
    return "; ".join(sorted({r.get("hardware", "unknown") for r in records}))
