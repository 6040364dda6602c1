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
    "virtual_seconds",
    "cumulative_virtual_seconds",
    "clients_delivered",
    "clients_lost",
    "uplink_airtime_s",
    "downlink_airtime_s",
    "energy_j",
    "cumulative_energy_j",
    "loss",
    "accuracy",
    "gap",
    "wall_seconds",
]
"""rounds.csv's columns; round 0 is the initial model (no traffic). Bytes are the
payloads' real lengths; `gap` is the relative objective gap (synthetic tasks only).
With a channel: the round's virtual seconds, the clients whose update arrived in
time or did not, airtimes summed over clients (s) and the clients' energy (J)."""


_CUMULATIVE = ("uplink_bytes", "virtual_seconds", "energy_j")
"""Columns summed over the rounds so far (into cumulative_<column>) when a row has them."""


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
        last = self.rows[-1] if self.rows else {}
        row = {
            **row,
            **{
                f"cumulative_{k}": last.get(f"cumulative_{k}", 0) + row.get(k, 0)
                for k in _CUMULATIVE
                if k in row
            },
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
            "virtual_seconds": last.get("cumulative_virtual_seconds"),
            "energy_j": last.get("cumulative_energy_j"),
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
