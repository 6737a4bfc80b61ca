"""CPU accounting for benchmarks: how many CPU seconds each process tree used in a phase."""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path

_TICKS = os.sysconf("SC_CLK_TCK")


def processes() -> dict[int, tuple[int, str, float]]:
    """pid -> (parent pid, command name, CPU seconds so far) for every process."""
    table: dict[int, tuple[int, str, float]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            raw = (entry / "stat").read_text()
        except OSError:
            continue
        name = raw[raw.index("(") + 1 : raw.rindex(")")]
        fields = raw[raw.rindex(")") + 2 :].split()
        table[int(entry.name)] = (
            int(fields[1]),
            name,
            (int(fields[11]) + int(fields[12])) / _TICKS,
        )
    return table


def tree(root: int, table: Mapping[int, tuple[int, str, float]]) -> set[int]:
    """`root` and every process under it that `table` (`processes()`) holds."""
    children: dict[int, list[int]] = {}
    for pid, (parent, _name, _cpu) in table.items():
        children.setdefault(parent, []).append(pid)
    found, todo = set(), [root]
    while todo:
        pid = todo.pop()
        if pid in table and pid not in found:
            found.add(pid)
            todo.extend(children.get(pid, []))
    return found


def snapshot(
    roots: Mapping[str, int], by_name: Mapping[str, str], alone: Mapping[str, int]
) -> dict[str, float]:
    """CPU seconds of each named process tree (`roots`: label -> pid), of every process whose
    command name starts with a prefix (`by_name`: label -> prefix, e.g. the broker), and of
    single processes without their children (`alone`: label -> pid)."""
    table = processes()
    result = {
        label: sum(table[pid][2] for pid in tree(root, table)) for label, root in roots.items()
    }
    for label, pid in alone.items():
        result[label] = table.get(pid, (0, "", 0.0))[2]
    for label, prefix in by_name.items():
        result[label] = sum(cpu for _p, name, cpu in table.values() if name.startswith(prefix))
    return result


def delta(before: Mapping[str, float], after: Mapping[str, float]) -> dict[str, float]:
    return {label: round(after[label] - before.get(label, 0.0), 2) for label in after}
