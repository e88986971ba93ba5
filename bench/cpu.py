"""CPU used during a measurement: by the server, by wrk, and by the rest.

The machine is shared (other sessions run tests on the same two cores), so
every row reports how many cores the server under load used and how many
everything else used meanwhile. Linux only: reads ``/proc``.
"""

from __future__ import annotations

import os
import resource
import time
from dataclasses import dataclass
from pathlib import Path

__all__ = ["CpuMeter", "CpuUse", "tree_switches"]

_TICK = os.sysconf("SC_CLK_TCK")


@dataclass(frozen=True)
class CpuUse:
    """Average cores busy over a measurement."""

    server: float
    wrk: float
    others: float


def _machine_busy() -> float:
    """CPU seconds spent busy by all cores since boot."""
    fields = Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]
    ticks = [int(x) for x in fields]
    # user nice system idle iowait irq softirq steal [guest guest_nice]; the
    # guest times are already counted in user and nice.
    busy = sum(ticks[:8]) - ticks[3] - ticks[4]
    return busy / _TICK


def _processes() -> dict[int, tuple[int, float]]:
    """Every process: its parent and the CPU seconds it used so far."""
    found: dict[int, tuple[int, float]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        # The command name may hold spaces; the fields after it do not.
        rest = stat.rpartition(")")[2].split()
        found[int(entry.name)] = (int(rest[1]), (int(rest[11]) + int(rest[12])) / _TICK)
    return found


def _tree(root: int, processes: dict[int, tuple[int, float]]) -> set[int]:
    """``root`` and all its descendants."""
    members = {root}
    changed = True
    while changed:
        changed = False
        for pid, (ppid, _) in processes.items():
            if ppid in members and pid not in members:
                members.add(pid)
                changed = True
    return members


def _tree_cpu(root: int) -> float:
    """CPU seconds used so far by ``root`` and all its descendants."""
    processes = _processes()
    return sum(processes.get(pid, (0, 0.0))[1] for pid in _tree(root, processes))


def tree_switches(root: int) -> int:
    """Context switches so far (voluntary and not) of every thread of
    ``root`` and its descendants: each time a thread left the CPU."""
    total = 0
    for pid in _tree(root, _processes()):
        for status in Path(f"/proc/{pid}/task").glob("*/status"):
            try:
                text = status.read_text()
            except OSError:
                continue  # the thread ended meanwhile
            for line in text.splitlines():
                if "ctxt_switches:" in line:
                    total += int(line.split()[1])
    return total


def _children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


class CpuMeter:
    """Measures CPU between ``start`` and ``stop`` for one server tree."""

    def __init__(self, server_pid: int) -> None:
        self.pid = server_pid
        self._start = (0.0, 0.0, 0.0, 0.0)

    def start(self) -> None:
        self._start = (
            time.monotonic(),
            _machine_busy(),
            _tree_cpu(self.pid) if self.pid else 0.0,
            _children_cpu(),
        )

    def stop(self) -> CpuUse:
        """Cores used since ``start``; wrk is the only child that ended."""
        wall0, busy0, server0, children0 = self._start
        wall = max(time.monotonic() - wall0, 1e-6)
        busy = _machine_busy() - busy0
        server = (_tree_cpu(self.pid) if self.pid else 0.0) - server0
        wrk = _children_cpu() - children0
        others = max(busy - server - wrk, 0.0)
        return CpuUse(server / wall, wrk / wall, others / wall)
