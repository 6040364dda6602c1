"""A run's results directory: config.json, rounds.csv (one row per round), clients.csv (one row
per instructed client and round: `flcomp.strategies.traffic.CLIENT_COLUMNS`), summary.json."""

from __future__ import annotations

import csv
import json
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

from flcomp.strategies import RoundTraffic
from flcomp.strategies.traffic import CLIENT_COLUMNS

_CUMULATIVE = {"uplink_bytes": "downlink_bytes", "virtual_seconds": "virtual_seconds", "energy_j": "energy_j"}
"""Columns summed over the rounds so far (into cumulative_<column>) when a row has them, each
placed after the column named here."""


_PEAKS = {
    "peak_server_state_bytes": "server_state_bytes",
    "peak_clients_held": "clients_held",
    "peak_downlink_state_bytes": "downlink_state_bytes",
    "max_client_state_bytes": "client_state_max",
}
"""summary.json's codec-state entries: the largest value of a rounds.csv column over the run."""


def _traffic_columns() -> list[str]:
    """RoundTraffic's columns with the cumulative ones in their places."""
    after = {place: f"cumulative_{column}" for column, place in _CUMULATIVE.items()}
    return [c for column in RoundTraffic.COLUMNS for c in (column, after.get(column)) if c is not None]


ROUND_COLUMNS = ["round", *_traffic_columns(), "loss", "accuracy", "gap", "wall_seconds"]
"""rounds.csv's columns (before the codecs' stat columns, `RoundTraffic.stat_columns`); round 0
is the initial model (no traffic). Bytes are the payloads' real lengths; `gap` is the relative
objective gap (synthetic tasks only). With a channel: the round's virtual seconds, the clients
whose update arrived in time or did not, airtimes summed over clients (s) and the clients'
energy (J). The codec state held after each round: the server's per-client decoder states
and how many clients they are, its downlink state, and the accepted clients' own states
(mean and largest; bytes). See `flcomp.strategies.traffic` for the traffic columns."""


@dataclass
class RunRecorder:
    """Writes a run's directory as the run goes: the config first, a row per round, the summary last."""

    directory: Path
    stat_columns: list[str] = field(default_factory=list)
    """The codecs' stat columns (`RoundTraffic.stat_columns`), after ROUND_COLUMNS."""
    rows: list[dict] = field(default_factory=list)
    _start: float = field(default_factory=time.perf_counter)

    @property
    def columns(self) -> list[str]:
        return ROUND_COLUMNS + self.stat_columns

    def start(self, config: dict) -> None:
        self.directory.mkdir(parents=True, exist_ok=True)
        (self.directory / "config.json").write_text(json.dumps(config, indent=2) + "\n")
        _write_csv(self.directory / "rounds.csv", self.columns, [], "w")
        _write_csv(self.directory / "clients.csv", CLIENT_COLUMNS, [], "w")

    def resume(self, rows: list[dict]) -> None:
        """Go on from a checkpoint's `rows`: rounds.csv is cut back to them (a killed run may have
        written later rounds) and the wall clock goes on from the last one's wall_seconds."""
        self.rows = [dict(r) for r in rows]
        last = int(self.rows[-1]["round"]) if self.rows else 0
        clients = [r for r in _client_rows(self.directory / "clients.csv") if int(r["round"]) <= last]
        for name, columns, kept in (
            ("rounds.csv", self.columns, self.rows),
            ("clients.csv", CLIENT_COLUMNS, clients),
        ):
            tmp = self.directory / f".{name}.tmp"
            _write_csv(tmp, columns, kept, "w")
            tmp.replace(self.directory / name)
        self._start = time.perf_counter() - float(self.rows[-1]["wall_seconds"]) if self.rows else self._start

    def add_round(self, row: dict, clients: Iterable[dict] = ()) -> dict:
        """Append a row (missing columns stay empty) to rounds.csv and the round's `clients` rows
        (`RoundTraffic.client_rows`) to clients.csv; returns the row with the derived columns."""
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
        _write_csv(self.directory / "rounds.csv", self.columns, [row], "a")
        _write_csv(
            self.directory / "clients.csv",
            CLIENT_COLUMNS,
            [{**c, "round": row["round"]} for c in clients],
            "a",
        )
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
            **{key: max(r.get(column) or 0 for r in self.rows) for key, column in _PEAKS.items()},
        }
        (self.directory / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
        return summary


def _write_csv(path: Path, columns: Iterable[str], rows: Iterable[dict], mode: str) -> None:
    """Write `rows` under `columns` (a missing value an empty cell, others ignored): a new file
    with its header (mode "w"), or appended to one (mode "a")."""
    with open(path, mode, newline="") as f:
        out = csv.DictWriter(f, list(columns), restval="", extrasaction="ignore")
        if mode == "w":
            out.writeheader()
        out.writerows(rows)


def _client_rows(path: Path) -> list[dict]:
    """The whole rows of a clients.csv (none if it is missing: a run from before it existed);
    a row cut short (a run killed while writing it) or without a round number is left out."""
    if not path.exists():
        return []
    with open(path, newline="") as f:
        return [r for r in csv.DictReader(f) if None not in r.values() and r.get("round", "").isdigit()]


def load_run(directory: Path) -> tuple[dict, list[dict], dict]:
    """(config, rounds, summary) of a results directory; numbers parsed, empty cells None."""
    config = json.loads((directory / "config.json").read_text())
    summary = json.loads((directory / "summary.json").read_text())
    with open(directory / "rounds.csv", newline="") as f:
        rounds = [{k: (float(v) if v != "" else None) for k, v in row.items()} for row in csv.DictReader(f)]
    return config, rounds, summary


RESULTS_HEADER = (
    "# Results\n\nGenerated by the experiments under examples/ (each writes its own section); "
    "do not edit by hand: rerun the experiment named in a section to refresh it.\n"
)


def write_section(path: Path, name: str, markdown: str) -> None:
    """Put `markdown` in `path` (e.g. docs/RESULTS.md) as section `name`, replacing that
    section's previous text and keeping the others'."""
    begin, end = f"<!-- {name}:begin -->", f"<!-- {name}:end -->"
    block = f"{begin}\n{markdown.strip()}\n{end}"
    text = path.read_text() if path.exists() else RESULTS_HEADER
    if begin in text and end in text:
        text = text[: text.index(begin)] + block + text[text.index(end) + len(end) :]
    else:
        text = text.rstrip() + "\n\n" + block + "\n"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
