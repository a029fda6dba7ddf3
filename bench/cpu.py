"""Where the CPU went during a measurement: per process group, from /proc (Linux).

``CpuMeter`` reads the user + system time of groups of processes (the bench's
workers, daphnes, the PostgreSQL backends serving the bench database, the rest
of PostgreSQL, Redis, the bench process itself) and the whole machine's busy
time at the start and at the end of a window, and reports each as cores used
(CPU seconds per second of the window). A process that starts inside the
window counts from zero; one that exits inside it is not counted (the benches
measure between the start and the stop of their processes).
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterable
from pathlib import Path

TICKS = os.sysconf("SC_CLK_TCK")
CORES = os.cpu_count() or 1


def process_cpu(pid: int) -> float | None:
    """CPU seconds (user + system) used so far by ``pid``, or None if it is gone."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return None
    return (int(fields[11]) + int(fields[12])) / TICKS  # utime, stime (fields 14, 15)


def machine_busy() -> float:
    """CPU seconds the whole machine spent busy (not idle, not waiting for I/O)."""
    values = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    idle = values[3] + values[4]  # idle, iowait
    return (sum(values[:8]) - idle) / TICKS  # without guest time, counted in user already


def processes(match: Callable[[str], bool]) -> list[int]:
    """The pids whose command line (NULs as spaces) ``match`` accepts."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode()
        except OSError:
            continue
        if cmdline and match(cmdline):
            found.append(int(entry.name))
    return found


def postgres_backends(database: str) -> Callable[[], list[int]]:
    """The PostgreSQL backends serving ``database`` (their title names it)."""
    return lambda: processes(lambda c: c.startswith("postgres: ") and f" {database} " in c)


def postgres_others(database: str) -> Callable[[], list[int]]:
    """The rest of PostgreSQL: WAL writer, checkpointer, other databases' backends."""
    return lambda: processes(
        lambda c: (c.startswith("postgres") or "/postgres " in c) and f" {database} " not in c
    )


def redis_server() -> list[int]:
    return processes(lambda c: c.startswith("redis-server"))


def fixed(pids: Iterable[int]) -> Callable[[], list[int]]:
    pids = list(pids)
    return lambda: pids


class CpuMeter:
    """Cores used by each group of processes between ``start()`` and ``stop()``."""

    def __init__(self, groups: dict[str, Callable[[], list[int]]]) -> None:
        self.groups = groups

    def _read(self) -> dict[str, dict[int, float]]:
        read = {}
        for name, pids in self.groups.items():
            read[name] = {}
            for pid in pids():
                cpu = process_cpu(pid)
                if cpu is not None:
                    read[name][pid] = cpu
        return read

    def start(self) -> None:
        self.began, self.busy, self.before = time.monotonic(), machine_busy(), self._read()

    def stop(self) -> dict[str, float]:
        """Cores per group, and ``machine`` (busy cores of the whole machine)."""
        after, busy = self._read(), machine_busy()
        wall = time.monotonic() - self.began
        cores = {
            name: sum(cpu - self.before[name].get(pid, 0.0) for pid, cpu in pids.items()) / wall
            for name, pids in after.items()
        }
        cores["machine"] = (busy - self.busy) / wall
        return cores


def describe(cores: dict[str, float]) -> str:
    """``workers 1.31, ...; machine busy 1.97 of 2 cores (other processes 0.10)``: the
    machine's busy cores beyond the groups are other sessions' (a shared machine)."""
    ours = {name: value for name, value in cores.items() if name != "machine"}
    parts = [f"{name} {value:.2f}" for name, value in ours.items()]
    others = max(0.0, cores["machine"] - sum(ours.values()))
    return (
        ", ".join(parts)
        + f"; machine busy {cores['machine']:.2f} of {CORES} cores (other processes {others:.2f})"
    )
