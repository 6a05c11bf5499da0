"""``python -m bench.summary RUN...``: the goals of several harness runs side by side.

Each RUN is a directory ``python -m bench --out`` wrote (or its ``bench.json``). One
run on a shared machine lands near a goal's line on either side of it; the table shows
every run's measurement of each goal and in how many runs it was met, as README gives
them.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import click
import orjson


def load(path: Path) -> dict[str, Any]:
    """A run's JSON (``path`` is the file, or the directory holding ``bench.json``)."""
    file = path / "bench.json" if path.is_dir() else path
    try:
        run: dict[str, Any] = orjson.loads(file.read_bytes())
    except (OSError, orjson.JSONDecodeError) as exc:
        raise click.BadParameter(f"{file}: not a harness run ({exc})") from None
    if not isinstance(run, dict) or "goals" not in run or "meta" not in run:
        raise click.BadParameter(f"{file}: not a harness run (no goals)")
    return run


def runs_line(runs: list[dict[str, Any]]) -> str:
    """Which runs: when, at which commit, on what machine."""
    parts = []
    for number, run in enumerate(runs, 1):
        meta = run["meta"]
        when = meta.get("began") or meta["date"]
        if meta.get("ended"):
            when += f" to {meta['ended'][-9:]}"
        commit = f", commit `{meta['commit']}`" if meta.get("commit") else ""
        size = "" if not meta.get("quick") else ", quick sizes"
        parts.append(f"run {number}: {when}{commit}{size}")
    machines = sorted({run["meta"]["machine"] for run in runs})
    return "; ".join(parts) + f" ({'; '.join(machines)})."


def table(runs: list[dict[str, Any]]) -> str:
    """Markdown: one row per goal (in the first run's order, then goals only later runs
    have), each run's measurement, and in how many runs the goal was met."""
    names: list[str] = []
    by_run: list[dict[str, dict[str, Any]]] = []
    for run in runs:
        goals = {row["goal"]: row for row in run["goals"]}
        by_run.append(goals)
        names += [name for name in goals if name not in names]
    head = ["goal", "target", *(f"run {n}" for n in range(1, len(runs) + 1)), "met"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for name in names:
        rows = [goals.get(name) for goals in by_run]
        target = next(row["target"] for row in rows if row is not None)
        measured = [row["measured"] if row is not None else "–" for row in rows]
        verdicts = [row["met"] for row in rows if row is not None and row["met"] != "-"]
        if not verdicts:
            met = "-"
        else:
            count = sum(v == "yes" for v in verdicts)
            met = "every run" if count == len(verdicts) else (
                "none" if count == 0 else f"{count} of {len(verdicts)}")
        lines.append("| " + " | ".join([name, target, *measured, met]) + " |")
    return "\n".join(lines)


@click.command()
@click.argument("runs", nargs=-1, required=True,
                type=click.Path(exists=True, path_type=Path))
def main(runs: tuple[Path, ...]) -> None:
    """The goals of harness runs (directories ``python -m bench --out`` wrote), side by
    side, as Markdown."""
    loaded = [load(path) for path in runs]
    click.echo(runs_line(loaded))
    click.echo()
    click.echo(table(loaded))


if __name__ == "__main__":
    main(sys.argv[1:])
