"""Health of error feedback per round (`flcomp.strategies.health`): the links' contractions, the
server memory's size, and the warning when two-way error feedback winds up."""

import logging
import random

import numpy as np
import pytest
from flwr.app import Array, ArrayRecord, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp
from test_flower_integration import NODES, fedavg, initial, make_app

from flcomp.clients import compression_mod
from flcomp.codecs import Codec, ModelSpec
from flcomp.sim import RunConfig, load_run
from flcomp.sim import run as simulate
from flcomp.sim.inline import InlineGrid
from flcomp.strategies import Compressed
from flcomp.strategies.downlink import Broadcast
from flcomp.strategies.health import MemoryWatch, contraction, norm
from flcomp.tasks import TaskConfig

HEALTH = ["uplink_contraction", "downlink_contraction", "server_memory_norm", "server_memory_ratio"]
METRICS = {c: "flcomp." + c.replace("_", "-") for c in HEALTH}


def delta(v: np.ndarray) -> float:
    """δ straight from its definition, in float64."""
    v = np.asarray(v, np.float64).ravel()
    return float(np.abs(v).sum() ** 2 / (v.size * (v @ v)))


def run(strategy: Compressed, app: ClientApp, rounds: int, nodes: int = NODES):
    random.seed(0)
    grid = InlineGrid(app, nodes, first_node_id=101)
    return strategy.start(grid=grid, initial_arrays=initial(), num_rounds=rounds)


# --- the contraction ------------------------------------------------------------------------


def test_contraction_is_one_for_equal_magnitudes_and_one_over_d_for_a_single_entry():
    assert contraction([np.array([1, -1, 1, -1], np.float32)]) == pytest.approx(1.0)
    assert contraction([np.eye(1, 50, 7, dtype=np.float32)]) == pytest.approx(1 / 50)
    assert contraction([np.zeros(5, np.float32), np.zeros((2, 2), np.float32)]) is None


def test_contraction_is_of_the_concatenated_vector_and_scale_free():
    rng = np.random.default_rng(0)
    parts = [rng.standard_normal((20, 30)).astype(np.float32), rng.standard_normal(7).astype(np.float32)]
    whole = np.concatenate([p.ravel() for p in parts])
    assert contraction(parts) == pytest.approx(delta(whole), rel=1e-6)
    for scale in (1e-30, 1e30):  # squares that under- or overflow float32
        assert contraction([p * np.float32(scale) for p in parts]) == pytest.approx(delta(whole), rel=1e-5)
    assert norm([np.full(4, 1e30, np.float32)]) == pytest.approx(2e30)


def test_contraction_is_scaled_signs_contraction_factor():
    """‖v − C(v)‖² = (1 − δ)‖v‖² for C = scaled sign: what its error feedback keeps of v."""
    rng = np.random.default_rng(1)
    v = (rng.standard_normal(1000) * np.exp(rng.standard_normal(1000))).astype(np.float32)
    c = Codec.parse("scaled_sign:error_feedback=False")
    spec = ModelSpec.flat(v.size)
    sent = c.decoder(spec).decode(c.encoder(spec).encode([v]))[0]
    d = contraction([v])
    assert np.sum((v - sent) ** 2) == pytest.approx((1 - d) * np.sum(v.astype(np.float64) ** 2), rel=1e-4)


# --- the warning's rule ---------------------------------------------------------------------


def fires(series) -> int | None:
    """The round (1-based) where a default MemoryWatch fires on `series`, if it does."""
    watch = MemoryWatch()
    hits = [t + 1 for t, x in enumerate(series) if watch.observe(x)]
    assert len(hits) <= 1, "once per run"
    return hits[0] if hits else None


def test_the_watch_fires_on_a_memory_that_keeps_growing():
    t = np.arange(2000)
    assert fires(np.exp(0.05 * t)) == 80  # ×2.7 a window: past 10× the first window's three windows on
    slow = np.exp(0.002 * t) * (1 + 0.2 * np.random.default_rng(0).standard_normal(2000))
    assert 1000 < fires(slow) < 1300  # ×10 takes 1,150 rounds at this rate (lr 0.01's divergence)
    assert fires([None] * 100 + list(np.exp(0.05 * t))) == 180  # rounds without a memory do not count


def test_the_watch_stays_quiet_on_healthy_memories():
    rng = np.random.default_rng(1)
    t = np.arange(3000)
    noise = np.abs(1 + 0.5 * rng.standard_normal(3000))
    assert fires(noise) is None  # settled, noisy
    assert fires(np.minimum(1.0, (t + 1) / 10) * noise) is None  # a start-up ramp
    assert fires(np.exp(-0.01 * t) + 1e-4 * noise) is None  # shrinks towards zero, then noise on it
    assert fires(0.3 + 0.7 * np.exp(-0.005 * t) + np.where(t % 500 == 7, 1e6, 0)) is None  # lone spikes
    bounce = np.concatenate([np.exp(-0.02 * t[:1000]), 0.5 * noise[:2000]])  # back, but below its start
    assert fires(bounce) is None


# --- the server's memory and step -------------------------------------------------------------


@pytest.mark.parametrize(
    "downlink", ["scaled_sign", "topk:ratio=0.2", "scaled_sign:ef_decay=0.9", "qsgd", "fp32"]
)
def test_the_broadcasts_health_is_its_encoders(downlink):
    rng = np.random.default_rng(2)
    broadcast = Broadcast(Codec.parse(downlink), seed=1)
    w = rng.standard_normal(300).astype(np.float32)
    broadcast.advance(1, ArrayRecord({"w": Array(w)}))
    assert broadcast.contraction is broadcast.memory_norm is broadcast.memory_ratio is None  # a key frame
    for t in range(2, 12):
        before, replica = broadcast.encoder.local.get("ef/0"), broadcast.replica["w"].numpy()
        w = (replica - 0.1 * rng.standard_normal(300) * np.exp(rng.standard_normal(300))).astype(np.float32)
        broadcast.advance(t, ArrayRecord({"w": Array(w)}))
        step = broadcast.replica["w"].numpy() - replica
        if downlink == "fp32":  # lossless: nothing to measure
            assert broadcast.contraction is broadcast.memory_norm is broadcast.memory_ratio is None
            continue
        compressed = w - replica + (before if before is not None else 0)
        assert broadcast.contraction == pytest.approx(delta(compressed), rel=1e-5)
        if before is None:  # qsgd: no error feedback, no memory
            assert broadcast.memory_norm is broadcast.memory_ratio is None
            continue
        e = broadcast.encoder.local["ef/0"]
        assert broadcast.memory_norm == pytest.approx(np.linalg.norm(e.astype(np.float64)), rel=1e-6)
        assert broadcast.memory_ratio == pytest.approx(broadcast.memory_norm / np.linalg.norm(step), rel=1e-5)


@pytest.mark.parametrize("codec", ["scaled_sign", "topk:ratio=0.25"])
def test_two_way_with_one_client_is_one_way_and_the_server_memory_stays_zero(codec):
    """The server compresses the one client's decoded update again, and scaled sign and top-k give
    it back as it is (C(C(x)) = C(x)): the server holds back nothing but float32 rounding (w − Δ̂
    and back), and none at all for top-k, whose values pass as they are."""
    one = fedavg(min_available_nodes=1, min_train_nodes=1)
    two_way, one_way = Compressed(one, codec=codec, downlink=codec), Compressed(one, codec=codec)
    models = [run(s, make_app(), rounds=8, nodes=1).arrays["w"].numpy() for s in (two_way, one_way)]
    np.testing.assert_allclose(models[0], models[1], rtol=0, atol=1e-5 * np.abs(models[1]).max())
    for t in range(2, 9):
        assert two_way.traffic[t].server_memory_ratio < 1e-5, t
        assert two_way.traffic[t].downlink_contraction == pytest.approx(
            two_way.traffic[t - 1].uplink_contraction
        )
    assert np.abs(two_way.broadcast.encoder.local["ef/0"]).max() <= 1e-6 * np.abs(models[0]).max()
    if codec.startswith("topk"):
        assert np.array_equal(*models) and not two_way.broadcast.encoder.local["ef/0"].any()
    # With several clients the server's vector is an average the codec does not give back as it is.
    several = Compressed(fedavg(), codec=codec, downlink=codec)
    run(several, make_app(), rounds=8)
    assert min(several.traffic[t].server_memory_ratio for t in range(2, 9)) > 0.01


# --- the round metrics and rounds.csv -------------------------------------------------------


def flat(record: ArrayRecord) -> np.ndarray:
    """The test model's float arrays, w then b, as one vector."""
    return np.concatenate([record["w"].numpy().ravel(), record["b"].numpy().ravel()])


class Recording(type(fedavg())):
    """FedAvg that keeps the models it aggregates: w_global − Δ̂ of each accepted client."""

    def __init__(self, **kw):
        super().__init__(fraction_evaluate=0.0, **kw)
        self.models: dict[int, list[np.ndarray]] = {}

    def aggregate_train(self, server_round, replies):
        replies = list(replies)
        self.models[server_round] = [flat(r.content["arrays"]) for r in replies]
        return super().aggregate_train(server_round, replies)


def test_the_uplink_contraction_is_the_median_over_the_decoded_updates():
    inner = Recording()
    strategy = Compressed(inner, codec="topk:ratio=0.25")
    models = []

    def evaluate(server_round, arrays):
        models.append(flat(arrays))  # round 0's is the initial model

    random.seed(0)
    grid = InlineGrid(make_app(), NODES, first_node_id=101)
    strategy.start(grid=grid, initial_arrays=initial(), num_rounds=3, evaluate_fn=evaluate)
    for t in (1, 2, 3):
        expected = np.median([delta(models[t - 1] - local) for local in inner.models[t]])
        assert strategy.traffic[t].uplink_contraction == pytest.approx(expected, rel=1e-4)
        assert 0.1 < expected < 0.5  # top-k's 17 of 67 entries, unequal: far from 1
        assert strategy.traffic[t].downlink_contraction is None  # no downlink codec
        assert METRICS["downlink_contraction"] not in strategy.traffic[t].to_metrics()


def test_the_round_metrics_carry_the_health_of_both_links():
    strategy = Compressed(fedavg(), codec="topk:ratio=0.25", downlink="scaled_sign")
    result = run(strategy, make_app(), rounds=4)
    for t, metrics in result.train_metrics_clientapp.items():
        traffic = strategy.traffic[t]
        assert len(traffic.uplink_contractions) == NODES
        assert metrics[METRICS["uplink_contraction"]] == np.median(traffic.uplink_contractions)
        for column in HEALTH[1:]:
            assert (METRICS[column] in metrics) == (t > 1), (t, column)  # round 1 sends key frames
            if t > 1:
                assert metrics[METRICS[column]] == traffic.row()[column] == getattr(traffic, column)
    assert strategy.traffic[4].server_memory_ratio == pytest.approx(
        strategy.broadcast.memory_norm / strategy.broadcast.step_norm
    )


def test_rounds_csv_has_the_health_columns_empty_where_they_do_not_apply(tmp_path):
    task = TaskConfig(dataset="digits", model="logreg", num_clients=3, lr=0.1)
    config = RunConfig(task=task, codec="scaled_sign", downlink="qsgd", rounds=3, engine="inline")
    simulate(config, tmp_path, progress=False)
    _, rounds, _ = load_run(tmp_path)
    assert all(column in rounds[0] for column in HEALTH)
    assert [r["uplink_contraction"] is None for r in rounds] == [True, False, False, False]
    assert all(0 < r["uplink_contraction"] <= 1 for r in rounds[1:])
    assert [r["downlink_contraction"] is None for r in rounds] == [True, True, False, False]
    assert all(r["server_memory_norm"] is None and r["server_memory_ratio"] is None for r in rounds)


# --- the warning ----------------------------------------------------------------------------


def make_diverging_app() -> ClientApp:
    """Each client's 'training' pushes w away from its target (×1.2 a round): an unstable run."""
    app = ClientApp(mods=[compression_mod])

    @app.train()
    def train(msg: Message, context) -> Message:
        w = msg.content["arrays"]["w"].numpy()
        target = np.random.default_rng(context.node_config["partition-id"]).standard_normal(w.size)
        local = ArrayRecord({"w": Array((w + 0.2 * (w - target)).astype(np.float32))})
        return Message(
            RecordDict({"arrays": local, "metrics": MetricRecord({"num-examples": 10})}), reply_to=msg
        )

    return app


def test_the_warning_fires_once_when_the_server_memory_keeps_growing(caplog):
    strategy = Compressed(fedavg(), codec="scaled_sign", downlink="scaled_sign")
    random.seed(0)
    grid = InlineGrid(make_diverging_app(), NODES, first_node_id=101)
    with caplog.at_level(logging.WARNING):
        strategy.start(grid=grid, initial_arrays=ArrayRecord({"w": initial()["w"]}), num_rounds=70)
    warnings = [r.getMessage() for r in caplog.records if "keeps growing" in r.getMessage()]
    # The memory starts in round 2 (round 1 sends key frames); ×1.2 a round is ×38 a window of 20:
    # the second window (rounds 22 to 41) closes the case.
    assert len(warnings) == 1 and warnings[0].startswith("round 41: ") and "ef_decay" in warnings[0]
    norms = [strategy.traffic[t].server_memory_norm for t in range(2, 71)]
    assert norms[-1] > 1e3 * norms[0]


def test_the_warning_stays_quiet_on_a_converging_two_way_run(caplog):
    strategy = Compressed(fedavg(), codec="scaled_sign", downlink="scaled_sign")
    with caplog.at_level(logging.WARNING):
        run(strategy, make_app(), rounds=70)
    assert "keeps growing" not in caplog.text
    assert all(strategy.traffic[t].server_memory_norm is not None for t in range(2, 71))
