"""Bad input to `flcomp` and to the configs behind it: one line, exit status 2, no traceback;
NaN, inf and out-of-range values refused by the Python API with ValueError. No simulation runs."""

from __future__ import annotations

import dataclasses
import json
import math
import typing
from pathlib import Path

import pytest

import flcomp.sim
from flcomp import keyvalue
from flcomp.channel import Channel
from flcomp.channel.presets import CHANNELS, CellConfig, ChannelConfig, FixedConfig
from flcomp.cli import main
from flcomp.codecs import REGISTRY, Codec
from flcomp.sim import RunConfig
from flcomp.tasks import TaskConfig

NAN, INF = math.nan, math.inf

BAD_ARGV = [
    # codecs, by name, parameter and value
    ["run", "--codec", "topkk"],
    ["run", "--codec", "topk:ratio=abc"],
    ["run", "--codec", "topk:ratio=2"],
    ["run", "--codec", "topk:ratio=0"],
    ["run", "--codec", "topk:ratio=nan"],
    ["run", "--codec", "topk:ratio"],
    ["run", "--codec", "topk:nosuch=1"],
    ["run", "--codec", "topk:ratio=0.1,ratio=0.2"],
    ["run", "--codec", "qsgd:levels=-1"],
    ["run", "--codec", "lag:xi=inf"],
    ["run", "--codec", "powersgd:min_compression_rate=nan"],
    ["run", "--codec", "topk:momentum=1"],
    ["run", "--codec", "fp32:error_feedback=maybe"],
    ["run", "--codec", "tpc:inner=topkk"],
    ["run", "--downlink", "fp8"],
    # channels
    ["run", "--channel", "fixd"],
    ["run", "--channel", "fixed:uplink_bps=nan"],
    ["run", "--channel", "fixed:uplink_bps=-1"],
    ["run", "--channel", "fixed:nosuch=1"],
    ["run", "--channel", "urban-sub6:seconds_per_sample=nan"],
    ["run", "--channel", "urban-sub6:erasure_probability=2"],
    ["run", "--channel", "urban-sub6:loss=lossy"],
    ["run", "--channel", "urban-sub6:deadline_s=0"],
    ["run", "--channel", "urban-sub6:fair_window=0"],
    ["run", "--channel", "trace:path=/nonexistent/bw.csv"],
    # task options
    ["run", "--lr", "nan"],
    ["run", "--lr", "-0.1"],
    ["run", "--lr", "fast"],
    ["run", "--num-clients", "0"],
    ["run", "--batch-size", "-1"],
    ["run", "--alpha", "inf"],
    ["run", "--weight-decay", "-1"],
    ["run", "--local-epochs", "1.5"],
    ["run", "--seed", "-1"],
    ["run", "--dataset", "imagenet"],
    ["run", "--model", "linear"],
    ["run", "--dataset", "synthetic-linear", "--model", "linear", "--partition", "dirichlet"],
    ["run", "--dataset", "fashion-mnist", "--data-dir", "/nonexistent"],
    # run options
    ["run", "--rounds", "0"],
    ["run", "--rounds", "-3"],
    ["run", "--fraction", "0"],
    ["run", "--fraction", "1.5"],
    ["run", "--fraction", "nan"],
    ["run", "--deadline", "0"],
    ["run", "--deadline", "nan"],
    ["run", "--deadline", "-inf"],
    ["run", "--client-cpus", "0"],
    ["run", "--run-seed", "-1"],
    ["run", "--strategy", "fedsgd"],
    ["run", "--engine", "gpu"],
    ["run", "--nosuch"],
    # compare checks every codec before it runs any
    ["compare", "fp32", "topkk"],
    ["compare", "--rounds", "0"],
    ["compare", "fp32", "--channel", "ideal:deadline_s=nan"],
    # codecs
    ["codecs", "--entries", "-5"],
    ["codecs", "--entries", "1e6"],
    ["codecs", "--rounds", "0"],
    ["codecs", "nosuchcodec"],
    ["codecs", "lgc:ae_lr=inf"],
    # plot
    ["plot", "/nonexistent/run"],
    ["plot"],
    [],
]


@pytest.fixture(autouse=True)
def no_simulation(monkeypatch):
    """A bad input must be refused before anything runs: a run would fail the test."""

    def refuse(*args, **kwargs):
        raise AssertionError("a simulation started")

    monkeypatch.setattr(flcomp.sim, "run", refuse)
    monkeypatch.setattr(flcomp.sim, "plot_runs", refuse)


def one_line_error(argv: list[str], capsys) -> str:
    """Run main(argv); assert it exits with status 2 and one stderr line; return that line."""
    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    err = capsys.readouterr().err
    assert exit_info.value.code == 2, err
    assert "Traceback" not in err
    lines = err.splitlines()
    assert len(lines) == 1 and lines[0].strip(), err
    assert " error: " in lines[0]
    return lines[0]


@pytest.mark.parametrize("argv", BAD_ARGV, ids=lambda argv: " ".join(argv) or "(nothing)")
def test_bad_input_is_one_line_and_exit_status_2(argv, capsys):
    one_line_error(argv, capsys)


@pytest.mark.parametrize(
    "argv, says",
    [
        (["run", "--codec", "topkk"], ["--codec", "unknown codec 'topkk'", "fp32", "topk"]),
        (["run", "--codec", "topk:ratio=2"], ["ratio", "(0, 1]"]),
        (["run", "--lr", "nan"], ["--lr", "finite"]),
        (["run", "--fraction", "1.5"], ["--fraction", "> 0 and ≤ 1"]),
        (["run", "--channel", "fixed:uplink_bps=inf"], ["--channel", "uplink_bps", "finite"]),
        (["codecs", "--entries", "-5"], ["--entries", "≥ 1"]),
        (["run", "--num-clients", "0"], ["num_clients ≥ 1"]),
        (["run", "--downlink-delivery", "multicast"], ["--downlink-delivery", "broadcast"]),
    ],
)
def test_the_line_says_what_was_wrong_and_what_is_allowed(argv, says, capsys):
    line = one_line_error(argv, capsys)
    for text in says:
        assert text in line


def write_run(directory: Path, rows: str, config: object | None = None) -> Path:
    directory.mkdir()
    (directory / "config.json").write_text(json.dumps({"codec": "fp32"} if config is None else config))
    (directory / "summary.json").write_text("{}")
    (directory / "rounds.csv").write_text(rows)
    return directory


def write_file(path: Path) -> Path:
    path.write_text("")
    return path


GOOD_ROWS = "round,cumulative_uplink_bytes,accuracy\n0,0,0.1\n1,100,0.5\n"


@pytest.mark.parametrize(
    "make",
    [
        lambda tmp: tmp,  # a directory, but no run in it
        lambda tmp: write_run(tmp / "r", ""),  # no rows
        lambda tmp: write_run(tmp / "r", "round,accuracy\n0,0.1\n"),  # no traffic column
        lambda tmp: write_run(tmp / "r", "round,cumulative_uplink_bytes,accuracy\n0,zero,0.1\n"),
        lambda tmp: write_run(tmp / "r", "round,cumulative_uplink_bytes,accuracy\n0,0,0.1,9\n"),
        lambda tmp: write_run(tmp / "r", GOOD_ROWS, config=[1, 2]),
        lambda tmp: write_file(tmp / "file.txt"),
    ],
    ids=["empty", "no-rows", "no-traffic", "bad-number", "extra-cell", "bad-config", "a-file"],
)
def test_plot_refuses_what_is_not_a_results_directory(make, tmp_path, capsys):
    one_line_error(["plot", str(make(tmp_path))], capsys)


@pytest.mark.parametrize("output", ["plot.xyz", "plot", "."])
def test_plot_refuses_an_output_it_cannot_write(output, tmp_path, capsys):
    run_dir = write_run(tmp_path / "r", GOOD_ROWS)
    one_line_error(["plot", str(run_dir), "-o", str(tmp_path / output)], capsys)


def test_plot_accepts_a_results_directory(tmp_path, monkeypatch, capsys):
    drawn = []
    monkeypatch.setattr(flcomp.sim, "plot_runs", lambda runs, output: drawn.append(runs) or output)
    run_dir = write_run(tmp_path / "r", GOOD_ROWS)
    main(["plot", str(run_dir), "-o", str(tmp_path / "p.png")])
    assert drawn == [[run_dir]]


@pytest.mark.parametrize(
    "rows",
    ["round,uplink_bps,downlink_bps\n1,nan,1e6\n", "round,uplink_bps,downlink_bps\n1,-5,1e6\n", "\0"],
    ids=["nan-rate", "negative-rate", "nul-byte"],
)
def test_a_bad_trace_file_is_refused(rows, tmp_path, capsys):
    trace = tmp_path / "bw.csv"
    trace.write_text(rows)
    one_line_error(["run", "--channel", f"trace:path={trace}"], capsys)


def test_run_out_must_not_be_a_file(tmp_path, capsys):
    target = tmp_path / "file"
    target.write_text("")
    assert "--out" in one_line_error(["run", "--out", str(target)], capsys)


# The Python API: the same values refused with ValueError.


def float_fields(cls: type) -> list[str]:
    """The fields typed float or float | None."""
    hints = typing.get_type_hints(cls)
    kinds = {f.name: (hints[f.name], *typing.get_args(hints[f.name])) for f in dataclasses.fields(cls)}
    return [name for name, options in kinds.items() if float in options]


CODEC_FLOATS = [(name, f) for name, cls in sorted(REGISTRY.items()) for f in float_fields(cls.Config)]
CHANNEL_FLOATS = [(name, f) for name, kind in sorted(CHANNELS.items()) for f in float_fields(kind.config)]


def test_the_configs_have_float_fields_to_check():
    assert len(CODEC_FLOATS) >= 10 and len(CHANNEL_FLOATS) >= 30


@pytest.mark.parametrize("name, field", CODEC_FLOATS)
@pytest.mark.parametrize("value", [NAN, INF, -INF])
def test_codec_configs_refuse_non_finite_values(name, field, value):
    with pytest.raises(ValueError):
        REGISTRY[name].Config(**{field: value})
    with pytest.raises(ValueError, match="finite"):
        Codec.parse(f"{name}:{field}={value}")


@pytest.mark.parametrize("name, field", CHANNEL_FLOATS)
@pytest.mark.parametrize("value", [NAN, INF, -INF])
def test_channel_configs_refuse_non_finite_values(name, field, value):
    kind = CHANNELS[name]
    if not (field == "max_bits_per_hz" and value == INF):  # inf: no spectral-efficiency cap
        with pytest.raises(ValueError):
            kind.config(**(kind.preset | {field: value}))
    with pytest.raises(ValueError, match="finite"):
        Channel.parse(f"{name}:{field}={value}")


def test_a_cell_without_a_spectral_efficiency_cap_is_allowed_in_python():
    assert CellConfig(max_bits_per_hz=INF).max_bits_per_hz == INF


@pytest.mark.parametrize(
    "text",
    [
        "topk:ratio=0",
        "topk:ratio=1.5",
        "randomk:ratio=-0.1",
        "qsgd:levels=0",
        "qsgd:bucket_size=0",
        "powersgd:rank=0",
        "lag:xi=-1",
        "signxor:lam=-1",
        "tpc:tau=-0.1",
        "gdsec:beta=2",
        "lgc:ae_lr=0",
        "topk:momentum=-0.5",
        "topk:value_dtype=float8",
    ],
)
def test_codec_parse_refuses_out_of_range_values(text):
    with pytest.raises(ValueError):
        Codec.parse(text)


@pytest.mark.parametrize(
    "text",
    [
        "fixed:uplink_bps=0",
        "fixed:latency_s=-1",
        "fixed:ue_power_w=-1",
        "ideal:deadline_s=-2",
        "ideal:erasure_probability=1.5",
        "ideal:packet_bits=0",
        "ideal:retransmissions=-1",
        "ideal:heterogeneity=-1",
        "urban-sub6:radius_m=10",
        "urban-sub6:bandwidth_hz=0",
        "urban-sub6:shadowing_db=-1",
        "urban-sub6:path_loss_exponent=0",
        "urban-sub6:fair_window=0.5",
        "urban-sub6:sharing=greedy",
    ],
)
def test_channel_parse_refuses_out_of_range_values(text):
    with pytest.raises(ValueError):
        Channel.parse(text)


def test_channel_validates_a_config_given_directly():
    with pytest.raises(ValueError):
        Channel("fixed", FixedConfig(uplink_bps=-1.0))
    with pytest.raises(ValueError):
        ChannelConfig(deadline_s=NAN)
    with pytest.raises(ValueError):
        Channel("nosuch", ChannelConfig())


@pytest.mark.parametrize(
    "kwargs",
    [
        dict(lr=NAN),
        dict(lr=INF),
        dict(lr=0.0),
        dict(alpha=NAN),
        dict(alpha=-1.0),
        dict(weight_decay=NAN),
        dict(weight_decay=INF),
        dict(weight_decay=-0.1),
        dict(num_clients=0),
        dict(local_epochs=0),
        dict(batch_size=-1),
        dict(seed=-1),
        dict(dataset="synthetic-linear", model="linear", partition="dirichlet"),
    ],
)
def test_task_config_refuses_bad_values(kwargs):
    with pytest.raises(ValueError):
        TaskConfig(**kwargs)


@pytest.mark.parametrize(
    "kwargs",
    [
        dict(rounds=0),
        dict(fraction=NAN),
        dict(fraction=0.0),
        dict(fraction=1.5),
        dict(client_cpus=NAN),
        dict(client_cpus=INF),
        dict(client_cpus=0.0),
        dict(seed=-1),
        dict(downlink_delivery="multicast"),
        dict(codec="topkk"),
        dict(codec="topk:ratio=2"),
        dict(downlink="fp33"),
        dict(channel="urban-sub7"),
        dict(channel="urban-sub6:deadline_s=nan"),
    ],
)
def test_run_config_refuses_bad_values(kwargs):
    with pytest.raises(ValueError):
        RunConfig(**kwargs)


@pytest.mark.parametrize("text", ["nan", "NaN", "inf", "-inf", "1e400"])
def test_keyvalue_refuses_non_finite_floats(text):
    with pytest.raises(ValueError, match="ratio: must be a finite number"):
        keyvalue.convert(text, float, "ratio")
    assert keyvalue.convert(text, str, "name") == text


def test_keyvalue_still_reads_good_values():
    assert keyvalue.convert("1e-3", float, "x") == 1e-3
    assert keyvalue.convert("none", float | None, "x") is None
    assert keyvalue.convert("off", bool, "x") is False
