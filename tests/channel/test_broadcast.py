"""A round's broadcast on the channel: once over the whole band at the worst listener's rate, each
listener's loss its own, the transmitter's airtime and energy counted once."""

from __future__ import annotations

import pytest

from flcomp.channel import Channel, ChannelSimulator, ClientLoad, Erasure, FixedLink, Lossless, channel

K = 10
BITS = 8 * 20_000  # a compressed payload of 20 kB


def cell_simulator(name: str, seed: int) -> ChannelSimulator:
    return Channel(name, channel(name).config).simulator(seed)


@pytest.mark.parametrize("name", ["urban-sub6", "iot-lowpower"])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_one_broadcast_takes_at_least_k_over_2_times_less_airtime_than_k_unicasts(name, seed):
    sim = cell_simulator(name, seed)
    listeners = {c: ClientLoad(0, 0, hears_broadcast=True) for c in range(K)}
    broadcast = sim.run_round(1, listeners, broadcast_bits=BITS)
    unicast = cell_simulator(name, seed).run_round(1, {c: ClientLoad(BITS, 0) for c in range(K)})
    worst = min(q.rate_bps for q in sim.link.broadcast_qualities(1, list(range(K))).values())
    assert broadcast.broadcast_airtime_s == pytest.approx(BITS / worst)
    assert broadcast.downlink_airtime_s == broadcast.broadcast_airtime_s  # once, not per listener
    assert unicast.downlink_airtime_s >= K / 2 * broadcast.downlink_airtime_s
    # The base station's energy: its power over the airtime, once.
    assert broadcast.downlink_energy_j == pytest.approx(
        sim.link.broadcast_qualities(1, [0])[0].tx_power_w * broadcast.broadcast_airtime_s
    )


def test_the_broadcast_rate_is_the_whole_band_at_the_worst_listeners_fading():
    sim = cell_simulator("urban-sub6", 0)
    whole = sim.link.broadcast_qualities(3, [0, 1, 2])
    shared = sim.link.qualities(3, [0, 1, 2], "downlink")
    assert all(whole[c].rate_bps > shared[c].rate_bps for c in whole)  # the whole band, not a third
    alone = sim.link.broadcast_qualities(3, [1])
    assert alone[1] == whole[1], "a client's broadcast link does not depend on the other listeners"


def fixed(loss=Lossless()) -> ChannelSimulator:
    return ChannelSimulator(FixedLink(1e6, 10e6, latency_s=0.01, bs_power_w=20.0), loss)


def test_own_bits_follow_the_broadcast_and_a_client_that_does_not_hear_it_does_not_wait_for_it():
    r = fixed().run_round(
        1,
        {
            0: ClientLoad(0, 0, hears_broadcast=True),
            1: ClientLoad(1_000_000, 0, hears_broadcast=True),
            2: ClientLoad(0, 0),
        },
        broadcast_bits=5_000_000,
    )
    assert r.broadcast_airtime_s == pytest.approx(0.5)
    assert r.clients[0].downlink_s == pytest.approx(0.01 + 0.5)
    assert r.clients[1].downlink_s == pytest.approx(0.01 + 0.5 + 0.1)  # its key frame after the broadcast
    assert r.clients[2].downlink_s == pytest.approx(0.01)
    assert r.downlink_airtime_s == pytest.approx(0.5 + 0.1)
    assert r.downlink_energy_j == pytest.approx(20.0 * 0.6)


def test_each_listener_loses_the_broadcast_on_its_own_draw():
    r = fixed(Erasure(0.5)).run_round(
        1, {c: ClientLoad(0, 1000, hears_broadcast=True) for c in range(40)}, broadcast_bits=1000
    )
    lost = [o for o in r.clients.values() if o.reason.startswith("downlink")]
    assert 5 < len(lost) < 35
    assert all(o.reason == "downlink broadcast erased" and o.uplink_airtime_s == 0 for o in lost)
    assert all(o.downlink_airtime_s == 0 for o in r.clients.values()), (
        "the broadcast's airtime is the round's"
    )
    assert r.broadcast_airtime_s == pytest.approx(1000 / 10e6)


def test_a_negative_broadcast_is_refused():
    with pytest.raises(ValueError, match="negative broadcast"):
        fixed().run_round(1, {0: ClientLoad(0, 0, hears_broadcast=True)}, broadcast_bits=-1)
