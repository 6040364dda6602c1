"""A run's results directory: config.json, rounds.csv (one row per round), summary.json."""

from __future__ import annotations

import csv
import json
import time
from dataclasses import dataclass, field
from pathlib import Path

ROUND_COLUMNS = [
    "round",
    "uplink_bytes",
    "downlink_bytes",
    "cumulative_uplink_bytes",
    "clients_accepted",
    "clients_dropped",
    "encode_seconds",
    "loss",
    "accuracy",
    "gap",
    "wall_seconds",
]
"""rounds.csv's columns; round 0 is the initial model (no traffic). Bytes are the
payloads' real lengths; `gap` is the relative objective gap (synthetic tasks only)."""


@dataclass
class RunRecorder:
    """Writes a run's directory as the run goes: the config first, a row per round, the summary last."""

    directory: Path
    rows: list[dict] = field(default_factory=list)
    _start: float = field(default_factory=time.perf_counter)

    def start(self, config: dict) -> None:
        self.directory.mkdir(parents=True, exist_ok=True)
        (self.directory / "config.json").write_text(json.dumps(config, indent=2) + "\n")
        with open(self.directory / "rounds.csv", "w", newline="") as f:
            csv.writer(f).writerow(ROUND_COLUMNS)

    def add_round(self, row: dict) -> dict:
        """Append a row (missing columns stay empty); returns it with the derived columns."""
        previous = self.rows[-1]["cumulative_uplink_bytes"] if self.rows else 0
        row = {
            **row,
            "cumulative_uplink_bytes": previous + row.get("uplink_bytes", 0),
            "wall_seconds": round(time.perf_counter() - self._start, 3),
        }
        self.rows.append(row)
        with open(self.directory / "rounds.csv", "a", newline="") as f:
            csv.DictWriter(f, ROUND_COLUMNS, restval="").writerow({k: row.get(k, "") for k in ROUND_COLUMNS})
        return row

    def finish(self) -> dict:
        """Write and return summary.json."""
        last = self.rows[-1]
        summary = {
            "rounds": last["round"],
            "final_accuracy": last.get("accuracy"),
            "final_loss": last.get("loss"),
            "final_gap": last.get("gap"),
            "uplink_bytes": last["cumulative_uplink_bytes"],
            "downlink_bytes": sum(r.get("downlink_bytes", 0) for r in self.rows),
            "clients_dropped": sum(r.get("clients_dropped", 0) for r in self.rows),
            "wall_seconds": last["wall_seconds"],
        }
        (self.directory / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
        return summary


def load_run(directory: Path) -> tuple[dict, list[dict], dict]:
    """(config, rounds, summary) of a results directory; numbers parsed, empty cells None."""
    config = json.loads((directory / "config.json").read_text())
    summary = json.loads((directory / "summary.json").read_text())
    with open(directory / "rounds.csv", newline="") as f:
        rounds = [{k: (float(v) if v != "" else None) for k, v in row.items()} for row in csv.DictReader(f)]
    return config, rounds, summary
