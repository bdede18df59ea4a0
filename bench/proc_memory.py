"""Resident memory of this process from /proc (Linux), shared by the memory benches."""
from __future__ import annotations

from pathlib import Path


def status_kib(field: str) -> int:
    """A /proc/self/status field in KiB, e.g. VmRSS (resident now) or VmHWM (peak since the last reset)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"{field} not in /proc/self/status")


def reset_peak() -> bool:
    """Reset VmHWM to the current RSS (clear_refs 5); False where the kernel does not allow it."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False
