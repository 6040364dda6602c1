"""flcomp.channel alone: radio formulas, fading statistics, losses, the clock, presets."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import special, stats

from flcomp.channel import (
    CellLink,
    Channel,
    ChannelSimulator,
    ClientLoad,
    ComputeModel,
    Erasure,
    FixedLink,
    Lossless,
    PacketErrors,
    TraceLink,
    channel,
    radio,
)
from flcomp.channel.links import LinkQuality


def cell(**overrides) -> CellLink:
    """An urban-sub6 cell link with `overrides`."""
    c = channel("urban-sub6", **overrides).config
    return Channel("urban-sub6", c).simulator(seed=overrides.get("seed", 0)).link


# --- radio -------------------------------------------------------------------------


def test_shannon_rate_matches_hand_computed_values():
    assert radio.shannon_rate(1e6, 15.0) == pytest.approx(4e6)
    assert radio.shannon_rate(20e6, 1.0) == pytest.approx(20e6)
    assert radio.shannon_rate(180e3, 0.0) == 0.0
    # 10 MHz at 20 dB: 10e6 * log2(101) = 66.58 Mbit/s
    assert radio.shannon_rate(10e6, radio.db_to_linear(20.0)) == pytest.approx(66.582e6, rel=1e-4)


def test_decibel_and_path_loss_conversions():
    assert radio.dbm_to_watts(30.0) == pytest.approx(1.0)
    assert radio.dbm_to_watts(23.0) == pytest.approx(0.19953, rel=1e-4)
    assert radio.path_loss_db(100.0, 24.42, 3.908) == pytest.approx(24.42 + 78.16)
    # kT·B at 290 K over 1 MHz with a 0 dB noise figure: -114 dBm
    assert radio.noise_watts(1e6, 0.0) == pytest.approx(radio.dbm_to_watts(-114.0))
    with pytest.raises(ValueError):
        radio.path_loss_db(0.0, 24.42, 3.908)


def test_rayleigh_power_gain_is_exponential_with_mean_one():
    n = 100_000
    h2 = radio.fading_gain(np.random.default_rng(1), "rayleigh", size=n)
    assert abs(h2.mean() - 1) < 4 / math.sqrt(n)  # Exp(1) has standard deviation 1
    assert stats.kstest(h2, "expon").pvalue > 0.01


def test_rician_power_gain_has_mean_one_and_less_spread_with_a_stronger_line_of_sight():
    n = 100_000
    rng = np.random.default_rng(2)
    weak, strong = (radio.fading_gain(rng, "rician", k, size=n) for k in (1.0, 10.0))
    assert abs(weak.mean() - 1) < 0.02 and abs(strong.mean() - 1) < 0.02
    assert strong.var() < weak.var() < 1
    assert stats.kstest(radio.fading_gain(rng, "rician", 0.0, size=n), "expon").pvalue > 0.01


def test_outage_probability_matches_the_rayleigh_closed_form():
    rounds, deadline = 4000, 0.5
    link = cell(shadowing_db=0.0, sharing="dedicated", max_bits_per_hz=math.inf, latency_s=0.0)
    mean_snr = float(radio.dbm_to_watts(23.0) * link.gain(0) / radio.noise_watts(20e6, 5.0))
    # a payload whose outage probability is about 0.3: 2^(R/B) − 1 = −ln(0.7)·SNR̄
    bits = int(deadline * 20e6 * math.log2(1 - math.log(0.7) * mean_snr))
    expected = radio.rayleigh_outage_probability(bits / deadline, 20e6, mean_snr)
    sim = ChannelSimulator(link, Lossless(), deadline_s=deadline, seed=0)
    lost = sum(sim.run_round(t, {0: ClientLoad(0, bits)}).lost for t in range(1, rounds + 1))
    tolerance = 4 * math.sqrt(expected * (1 - expected) / rounds)
    assert abs(lost / rounds - expected) < tolerance


# --- links -------------------------------------------------------------------------


def test_cell_placement_lies_within_the_cell_and_spreads_uniformly_over_its_area():
    link = cell()
    d = np.array([link.distance_m(c) for c in range(4000)])
    assert d.min() >= 35.0 and d.max() <= 289.0
    # uniform over the annulus: P(d <= r) = (r² − r_min²)/(R² − r_min²)
    cdf = lambda r: (np.clip(r, 35, 289) ** 2 - 35**2) / (289**2 - 35**2)  # noqa: E731
    assert stats.kstest(d, cdf).pvalue > 0.01


def test_equal_sharing_splits_the_band_and_dedicated_gives_each_the_whole_band():
    clients = list(range(10))
    shared = cell(max_bits_per_hz=math.inf).qualities(1, clients, "uplink")
    alone = cell(max_bits_per_hz=math.inf, sharing="dedicated").qualities(1, clients, "uplink")
    for c in clients:
        # the same received power over a tenth of the band: 10× the SNR, a tenth of the bandwidth
        assert shared[c].snr == pytest.approx(10 * alone[c].snr)
        assert shared[c].rate_bps == pytest.approx(radio.shannon_rate(2e6, shared[c].snr))
        assert shared[c].rate_bps < alone[c].rate_bps


def test_the_spectral_efficiency_cap_limits_the_rate():
    q = cell(sharing="dedicated", max_bits_per_hz=1.0).qualities(1, [0, 1, 2], "downlink")
    assert all(v.rate_bps <= 20e6 * 1.0 + 1e-6 for v in q.values())


def test_proportional_fair_shares_the_whole_band_and_favours_clients_in_a_good_fade():
    clients = list(range(8))
    fair, equal = cell(sharing="proportional-fair"), cell()
    for t in range(1, 30):
        f, e = fair.qualities(t, clients, "uplink"), equal.qualities(t, clients, "uplink")
    # the allocation is recoverable from the SNR: b = P·G·|h|²/(N0·NF·SNR); it sums to B
    eq_snr = np.array([e[c].snr for c in clients])
    shares = 20e6 / 8 * eq_snr / np.array([f[c].snr for c in clients])
    assert shares.sum() == pytest.approx(20e6)
    assert not np.allclose(shares, 20e6 / 8)


def test_a_clients_draws_do_not_depend_on_the_other_clients_or_the_call_order():
    a = cell(sharing="dedicated").qualities(3, [5, 1, 9], "uplink")
    b = cell(sharing="dedicated").qualities(3, [9, 5], "uplink")
    assert a[5] == b[5] and a[9] == b[9]
    assert cell(sharing="dedicated").qualities(4, [5], "uplink")[5] != a[5]  # fading is redrawn
    assert cell(sharing="dedicated").qualities(3, [5], "downlink")[5] != a[5]  # per direction


def test_trace_link_reads_per_client_rows_and_wraps_around(tmp_path):
    path = tmp_path / "trace.csv"
    path.write_text(
        "client,round,uplink_bps,downlink_bps,latency_s\n"
        "7,1,1000,5000,0.1\n7,2,2000,6000,0.2\n3,1,10,50,0\n3,2,20,60,0\n"
    )
    link = TraceLink(str(path))
    up = [link.qualities(t, [0, 1, 2], "uplink") for t in (1, 2, 3)]
    assert [up[0][c].rate_bps for c in (0, 1, 2)] == [10, 1000, 10]  # clients 3, 7, 3 of the file
    assert up[1][1].rate_bps == 2000 and up[1][1].latency_s == 0.2
    assert up[2][1].rate_bps == 1000  # round 3 is round 1 again
    assert link.qualities(2, [1], "downlink")[1].rate_bps == 6000


def test_trace_link_rejects_a_bad_file(tmp_path):
    bad = tmp_path / "bad.csv"
    bad.write_text("round,uplink_bps\n1,100\n")
    with pytest.raises(ValueError, match="missing columns"):
        TraceLink(str(bad))
    bad.write_text("round,uplink_bps,downlink_bps\n1,-5,100\n")
    with pytest.raises(ValueError, match="line 2"):
        TraceLink(str(bad))


# --- losses ------------------------------------------------------------------------


def test_erasures_happen_at_the_configured_rate():
    link = LinkQuality(1e6, 0.0, math.inf, 0.2)
    model = Erasure(0.3)
    lost = sum(not model.transmit(1000, link, np.random.default_rng(i)).delivered for i in range(5000))
    assert abs(lost / 5000 - 0.3) < 4 * math.sqrt(0.3 * 0.7 / 5000)


def test_packet_error_rate_grows_with_packet_length_and_falls_with_snr():
    m = PacketErrors(packet_bits=12_000)
    ber = float(radio.bpsk_bit_error_rate(3.0))
    assert m.packet_error_rate(12_000, 3.0) == pytest.approx(1 - (1 - ber) ** 12_000)
    assert m.packet_error_rate(100, 3.0) < m.packet_error_rate(12_000, 3.0)
    assert m.packet_error_rate(12_000, 10.0) < m.packet_error_rate(12_000, 3.0)
    assert m.packet_error_rate(12_000, math.inf) == 0.0


def test_payload_loss_matches_the_packet_error_rate_and_retransmissions_help():
    bits, n = 10 * 12_000, 4000
    # the SNR at which a 10-packet payload is lost with probability 0.3
    ber = 1 - 0.7 ** (1 / bits)
    snr = float(special.erfcinv(2 * ber) ** 2)
    link = LinkQuality(1e6, 0.0, snr, 0.2)
    per = PacketErrors().packet_error_rate(12_000, snr)
    once = [PacketErrors().transmit(bits, link, np.random.default_rng(i)) for i in range(n)]
    expected = 1 - (1 - per) ** 10
    assert 0.05 < expected < 0.95
    loss = sum(not t.delivered for t in once) / n
    assert abs(loss - expected) < 4 * math.sqrt(expected * (1 - expected) / n)
    twice = [PacketErrors(retransmissions=2).transmit(bits, link, np.random.default_rng(i)) for i in range(n)]
    assert sum(not t.delivered for t in twice) / n < loss / 2
    assert np.mean([t.airtime_s for t in twice]) > bits / 1e6  # retransmissions cost airtime
    assert all(t.airtime_s == bits / 1e6 for t in once)


def test_packet_errors_on_a_clean_link_lose_nothing():
    link = LinkQuality(1e6, 0.0, math.inf, 0.2)
    t = PacketErrors().transmit(123_457, link, np.random.default_rng(0))
    assert t.delivered and t.airtime_s == pytest.approx(0.123457)


# --- the clock, deadlines, energy ---------------------------------------------------


def fixed(deadline_s=None, compute=ComputeModel(), loss=Lossless()) -> ChannelSimulator:
    return ChannelSimulator(FixedLink(1e6, 10e6, latency_s=0.01, tx_power_w=0.2), loss, compute, deadline_s)


def test_round_time_is_the_slowest_clients_downlink_compute_and_uplink():
    sim = fixed(compute=ComputeModel(seconds_per_sample=0.001))
    r = sim.run_round(
        1, {0: ClientLoad(10_000_000, 1_000_000, 100), 1: ClientLoad(10_000_000, 2_000_000, 500)}
    )
    # client 1: downlink 0.01 + 1 s, compute 0.5 s, uplink 0.01 + 2 s
    assert r.clients[1].finish_s == pytest.approx(3.52)
    assert r.seconds == pytest.approx(3.52)
    assert r.delivered == 2 and r.uplink_airtime_s == pytest.approx(3.0)
    assert r.energy_j == pytest.approx(0.2 * 3.0)
    assert r.downlink_energy_j == pytest.approx(20.0 * 2.0)


def test_a_deadline_drops_exactly_the_clients_that_would_finish_after_it():
    sim = fixed(deadline_s=1.5)
    loads = {k: ClientLoad(0, 250_000 * k) for k in range(10)}  # client k finishes at 0.02 + 0.25·k s
    r = sim.run_round(1, loads)
    finish = {k: 0.02 + 0.25 * k for k in loads}
    assert {k for k, o in r.clients.items() if o.delivered} == {k for k, f in finish.items() if f <= 1.5}
    assert all("deadline" in o.reason for o in r.clients.values() if not o.delivered)
    assert r.seconds == 1.5
    # a straggler transmits until the deadline, not beyond: 1.5 − 0.01 s of downlink latency
    assert r.clients[9].energy_j == pytest.approx(0.2 * (1.5 - 0.01))
    assert fixed(deadline_s=10.0).run_round(1, loads).seconds == pytest.approx(finish[9])


def test_a_lost_downlink_means_no_training_and_no_upload():
    sim = fixed(loss=Erasure(1.0))
    o = sim.run_round(1, {0: ClientLoad(1000, 1000, 10)}).clients[0]
    assert not o.delivered and o.reason.startswith("downlink")
    assert o.compute_s == 0 and o.uplink_airtime_s == 0 and o.energy_j == 0


def test_device_speeds_are_heterogeneous_lognormal_and_seeded():
    model = ComputeModel(seconds_per_sample=0.01, heterogeneity=0.5, power_w=2.0)
    secs = np.array([model.seconds(7, c, ClientLoad(0, 0, 100)) for c in range(2000)])
    assert np.median(secs) == pytest.approx(1.0, rel=0.1)
    assert stats.kstest(np.log(secs), "norm", args=(0.0, 0.5)).pvalue > 0.01
    assert model.seconds(7, 3, ClientLoad(0, 0, 100)) == secs[3]
    measured = ComputeModel(measured=True)
    assert measured.seconds(0, 0, ClientLoad(0, 0, 100, measured_compute_s=0.7)) == 0.7
    r = ChannelSimulator(FixedLink(1e6, 1e6), Lossless(), model, seed=7).run_round(
        1, {3: ClientLoad(0, 0, 100)}
    )
    assert r.energy_j == pytest.approx(2.0 * secs[3])


def test_the_same_seed_gives_the_same_outcomes():
    def run(seed):
        sim = channel("urban-sub6", loss="packet", deadline_s=0.5, heterogeneity=1.0, seconds_per_sample=1e-3)
        s = sim.simulator(seed)
        loads = {k: ClientLoad(2_000_000, 400_000 + 1000 * k, 100) for k in range(20)}
        return [s.run_round(t, loads) for t in range(1, 6)]

    assert run(3) == run(3)
    assert run(3) != run(4)


def test_negative_loads_are_refused():
    with pytest.raises(ValueError, match="negative"):
        fixed().run_round(1, {0: ClientLoad(-1, 0)})


# --- presets and text ---------------------------------------------------------------


def test_channels_parse_from_text_and_describe_themselves_back():
    c = Channel.parse(
        "urban-sub6:deadline_s=2,sharing=proportional-fair,loss=erasure,erasure_probability=0.3"
    )
    assert c.config.deadline_s == 2.0 and c.config.sharing == "proportional-fair"
    assert Channel.parse(c.describe()) == c
    assert Channel.parse("iot-lowpower").config.bandwidth_hz == 180e3
    assert Channel.parse("ideal").describe() == "ideal"
    with pytest.raises(ValueError, match="unknown channel"):
        Channel.parse("5g")
    with pytest.raises(ValueError, match="no parameter"):
        Channel.parse("fixed:bandwidth_hz=1")
    with pytest.raises(ValueError, match="sharing"):
        Channel.parse("urban-sub6:sharing=greedy")
    with pytest.raises(ValueError):
        Channel.parse("urban-sub6:radius_m=10")  # inside the minimum distance
    with pytest.raises(ValueError):
        Channel.parse("fixed:deadline_s=0")


def test_the_urban_preset_gives_plausible_rates():
    """A 200 kB update from 10 clients sharing 20 MHz: Mbit/s rates, about a second."""
    sim = Channel.parse("urban-sub6").simulator(seed=0)
    r = sim.run_round(1, {k: ClientLoad(1_600_000, 1_600_000) for k in range(10)})
    up = sim.link.qualities(1, list(range(10)), "uplink")
    assert all(0.1e6 < q.rate_bps <= 2e6 * 7.41 * (1 + 1e-12) for q in up.values())
    assert 0.1 < r.seconds < 60
