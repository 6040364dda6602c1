"""Simulated runs on Flower's simulation engine (Ray), end to end, and their results."""

import csv
import fcntl
import importlib
import json

import pytest

from flcomp.cli import comparison_table, main
from flcomp.sim import RunConfig, load_run, plot_runs, run
from flcomp.tasks import TaskConfig

TASK = TaskConfig(dataset="digits", model="logreg", num_clients=4, lr=0.1)
VOLATILE = {"wall_seconds", "encode_seconds"}
"""rounds.csv columns that measure time, so differ between identical runs."""


def quick(codec: str, **kw) -> RunConfig:
    return RunConfig(task=TASK, codec=codec, rounds=3, **kw)


def stable_rows(directory) -> list[dict]:
    with open(directory / "rounds.csv", newline="") as f:
        return [{k: v for k, v in row.items() if k not in VOLATILE} for row in csv.DictReader(f)]


@pytest.mark.slow
def test_three_codecs_end_to_end(tmp_path):
    summaries = {c: run(quick(c), tmp_path / c, progress=False) for c in ("fp32", "topk", "qsgd")}
    for codec, summary in summaries.items():
        config, rounds, saved = load_run(tmp_path / codec)
        assert config["codec"] == codec and saved == summary
        assert [r["round"] for r in rounds] == [0, 1, 2, 3]
        assert all(r["clients_accepted"] == 4 for r in rounds[1:])
        assert 0 <= summary["final_accuracy"] <= 1
    assert summaries["fp32"]["final_accuracy"] > 0.5
    assert (
        summaries["topk"]["uplink_bytes"]
        < summaries["qsgd"]["uplink_bytes"]
        < summaries["fp32"]["uplink_bytes"]
    )
    table = comparison_table(summaries)
    assert "| fp32 |" in table and "x |" in table
    png = plot_runs([tmp_path / c for c in summaries], tmp_path / "plot.png")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


@pytest.mark.slow
@pytest.mark.parametrize("fraction", [1.0, 0.5])
def test_same_seed_same_bits_and_accuracy(tmp_path, fraction):
    config = quick("qsgd:levels=4", seed=5, fraction=fraction)
    run(config, tmp_path / "a", progress=False)
    run(config, tmp_path / "b", progress=False)
    assert stable_rows(tmp_path / "a") == stable_rows(tmp_path / "b")


@pytest.mark.slow
def test_cli_compare_writes_the_table(tmp_path, capsys):
    main(
        [
            "compare",
            "fp32",
            "scaled_sign",
            "--dataset",
            "digits",
            "--model",
            "logreg",
            "--num-clients",
            "3",
            "--rounds",
            "2",
            "--channel",
            "iot-lowpower:seconds_per_sample=0.001",
            "--deadline",
            "30",
            "--quiet",
            "--out",
            str(tmp_path),
        ]
    )
    out = capsys.readouterr().out
    assert "| scaled_sign:error_feedback=True |" in out and "virtual s | energy J |" in out
    assert (tmp_path / "comparison.md").read_text().strip() in out
    assert (tmp_path / "comparison.png").exists()
    config, rounds, summary = load_run(tmp_path / "00-fp32")
    assert config["channel"] == "iot-lowpower:deadline_s=30.0,seconds_per_sample=0.001"
    assert all(r["virtual_seconds"] > 0 and r["energy_j"] > 0 for r in rounds[1:])
    assert summary["virtual_seconds"] == pytest.approx(sum(r["virtual_seconds"] for r in rounds))
    # scaled sign sends ~1/32 of fp32's bits over the same 180 kHz links: less airtime
    _, sign_rounds, _ = load_run(tmp_path / "01-scaled_sign_error_feedback=True")
    airtime = [sum(r["uplink_airtime_s"] for r in rs[1:]) for rs in (sign_rounds, rounds)]
    assert airtime[0] < airtime[1] / 10


@pytest.mark.slow
@pytest.mark.parametrize("fraction", [1.0, 0.5])
def test_inline_engine_matches_flowers_simulation_engine(tmp_path, fraction):
    """Nodes are sampled by stable id on both engines: the same cohorts, the same rows."""
    run(quick("qsgd:levels=4", seed=2, fraction=fraction), tmp_path / "ray", progress=False)
    run(
        quick("qsgd:levels=4", seed=2, fraction=fraction, engine="inline"),
        tmp_path / "inline",
        progress=False,
    )
    assert stable_rows(tmp_path / "ray") == stable_rows(tmp_path / "inline")
    clients = [(tmp_path / e / "clients.csv").read_text() for e in ("ray", "inline")]
    assert clients[0] == clients[1] and len(clients[0].splitlines()) > 1


def test_inline_runs_with_client_sampling_are_reproducible(tmp_path):
    config = quick("topk:ratio=0.1", fraction=0.5, engine="inline", channel="urban-sub6:loss=packet")
    a = run(config, tmp_path / "a", progress=False)
    run(config, tmp_path / "b", progress=False)
    assert a["rounds"] == 3 and stable_rows(tmp_path / "a") == stable_rows(tmp_path / "b")
    _, rounds, _ = load_run(tmp_path / "a")
    assert all(r["clients_accepted"] + r["clients_dropped"] == 2 for r in rounds[1:])


def test_run_config_round_trips_through_json():
    config = quick("topk:ratio=0.1", fraction=0.5)
    assert RunConfig.from_dict(json.loads(json.dumps(config.as_dict()))) == config


def test_the_ray_engines_flower_app_is_a_valid_project_whose_components_load():
    from flwr.cli.config_utils import load_and_validate
    from flwr.clientapp import ClientApp
    from flwr.serverapp import ServerApp

    from flcomp.sim.simapp import components
    from flcomp.sim.simapp.launch import APP_PROJECT

    project, warnings = load_and_validate(APP_PROJECT)
    assert warnings == []
    app = project["tool"]["flwr"]["app"]
    assert set(app["config"]) == {
        components.RESULTS_DIR,
        components.RESUME_ROUND,
        components.CLIENT_MODS,
        components.RUNNER_PID,
    }
    loaded = {}
    for kind, spec in app["components"].items():
        module, _, attribute = spec.partition(":")
        loaded[kind] = getattr(importlib.import_module(module), attribute)
    assert isinstance(loaded["serverapp"], ServerApp) and isinstance(loaded["clientapp"], ClientApp)


@pytest.mark.parametrize(
    "cpus, address, expected",
    [
        (1.0, None, (1, 8)),
        (0.5, None, (1, 16)),
        (2.0, None, (2, 8)),
        (0.25, "h:1", ValueError),
        (3.0, "h:1", (3, None)),
    ],
)
def test_fractional_client_cpus_scale_a_local_cluster_only(cpus, address, expected):
    from flcomp.sim.simapp.launch import ray_resources

    config = quick("fp32", client_cpus=cpus, ray_address=address)
    if expected is ValueError:
        with pytest.raises(ValueError, match="whole"):
            ray_resources(config, 8)
    else:
        assert ray_resources(config, 8) == expected


def test_the_runner_follows_the_complete_rows_another_process_appends(tmp_path):
    from flcomp.sim.simapp.launch import _Follower

    path, seen = tmp_path / "rounds.csv", []
    follow = _Follower(path, first_round=1)
    follow.emit(seen.append)  # no file yet
    path.write_text("round,accuracy\n0,0.1\n1,0.5\n2,")
    follow.emit(seen.append)
    with open(path, "a") as f:
        f.write("0.75\n3,\n")
    follow.emit(seen.append)
    assert seen == [
        {"round": 1.0, "accuracy": 0.5},
        {"round": 2.0, "accuracy": 0.75},
        {"round": 3.0, "accuracy": None},
    ]


def test_a_run_whose_lock_is_held_is_refused_after_the_timeout(tmp_path):
    from flcomp.sim.simapp.components import run_lock

    (tmp_path / "config.json").write_text("{}")
    with open(tmp_path / "config.json", "rb") as held:
        fcntl.flock(held, fcntl.LOCK_EX)
        with pytest.raises(RuntimeError, match="another process"), run_lock(tmp_path, timeout=0.3):
            pass
    with run_lock(tmp_path, timeout=0.3):  # released: taken at once
        pass


def test_deadline_without_a_channel_means_an_ideal_network():
    from flcomp.cli import channel_text

    class Args:
        channel, deadline = None, 2.5

    assert channel_text(Args) == "ideal:deadline_s=2.5"
    Args.channel, Args.deadline = "urban-sub6:deadline_s=9", 1.0
    assert channel_text(Args) == "urban-sub6:deadline_s=1.0"
    Args.channel = Args.deadline = None
    assert channel_text(Args) is None


def test_recorder_sums_virtual_time_and_energy(tmp_path):
    from flcomp.sim.results import RunRecorder

    recorder = RunRecorder(tmp_path)
    recorder.start({})
    recorder.add_round({"round": 0, "uplink_bytes": 0, "virtual_seconds": 0.0, "energy_j": 0.0})
    recorder.add_round({"round": 1, "uplink_bytes": 10, "virtual_seconds": 1.5, "energy_j": 2.0})
    row = recorder.add_round({"round": 2, "uplink_bytes": 5, "virtual_seconds": 0.5, "energy_j": 1.0})
    assert (
        row["cumulative_uplink_bytes"],
        row["cumulative_virtual_seconds"],
        row["cumulative_energy_j"],
    ) == (
        15,
        2.0,
        3.0,
    )
    summary = recorder.finish()
    assert summary["virtual_seconds"] == 2.0 and summary["energy_j"] == 3.0


def test_comparison_table_adds_time_and_energy_with_a_channel():
    summaries = {
        "fp32": {
            "final_accuracy": 0.9,
            "uplink_bytes": 4_000_000,
            "rounds": 10,
            "virtual_seconds": 12.5,
            "energy_j": 3.25,
            "clients_dropped": 4,
        },
    }
    assert "| fp32 | 0.9000 | 4.000 | 1.0x | 10 | 12.50 | 3.25 | 4 |" in comparison_table(summaries)


def test_comparison_table_reports_reduction_against_fp32():
    summaries = {
        "fp32": {"final_accuracy": 0.9, "uplink_bytes": 4_000_000, "rounds": 10},
        "topk": {"final_accuracy": 0.8, "uplink_bytes": 50_000, "rounds": 10},
    }
    table = comparison_table(summaries)
    assert "| topk | 0.8000 | 0.050 | 80.0x | 10 |" in table


def test_results_sections_are_replaced_in_place(tmp_path):
    from flcomp.sim.results import write_section

    path = tmp_path / "RESULTS.md"
    write_section(path, "tpc", "## TPC\nold")
    write_section(path, "gdsec", "## GD-SEC\nkept")
    write_section(path, "tpc", "## TPC\nnew")
    text = path.read_text()
    assert text.startswith("# Results") and "new" in text and "old" not in text and "kept" in text
    assert text.index("## TPC") < text.index("## GD-SEC")
