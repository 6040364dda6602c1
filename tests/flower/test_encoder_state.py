"""The client's encoder state in `context.state`: saved and loaded bit for bit; a damaged or foreign
layout gives a fresh encoder (whose first payload becomes a key frame), never a crash."""

from __future__ import annotations

import json

import numpy as np
import pytest
from flwr.app import ArrayRecord, ConfigRecord, RecordDict

from flcomp.clients import encoder_state
from flcomp.codecs import Codec, ModelSpec, TensorSpec

SPEC = ModelSpec((TensorSpec((30, 4), "float32"), TensorSpec((7,), "float32")))
CODEC = Codec.parse("topk:ratio=0.1")
META = "flcomp.encoder.meta"


def is_fresh(encoder) -> bool:
    """Whether an encoder holds the initial state: no pending step, an empty error memory."""
    state = encoder.state_dict()
    fresh = CODEC.encoder(SPEC, seed=1).state_dict()
    return state.keys() == fresh.keys() and all(np.array_equal(state[k], fresh[k]) for k in state)


def trained_state() -> tuple[RecordDict, dict]:
    """A state after two committed steps and one pending, and the encoder's state dict."""
    rng = np.random.default_rng(0)
    encoder = CODEC.encoder(SPEC, seed=1)
    for step in range(3):
        if step:
            encoder.commit()
        encoder.encode([rng.standard_normal(t.shape).astype(np.float32) for t in SPEC.tensors])
    state = RecordDict()
    encoder_state.save_encoder(state, CODEC, SPEC, encoder)
    return state, encoder.state_dict()


def test_a_saved_encoder_loads_bit_for_bit():
    state, saved = trained_state()
    encoder = encoder_state.load_encoder(state, CODEC, SPEC, seed=1)
    assert not is_fresh(encoder)
    loaded = encoder.state_dict()
    assert loaded.keys() == saved.keys()
    for k, v in saved.items():
        np.testing.assert_array_equal(loaded[k], v)


@pytest.mark.parametrize(
    "layout",
    [
        [["ef/0", "<f4"]],  # two fields
        [["ef/0", "|O8", [120]]],  # not a number array
        [["ef/0", "<f4", [-120]]],  # negative shape
        [["ef/0", "<f4", [99999999]]],  # longer than the data
        [["ef/0", "<f4", [3]]],  # shorter than the data
        [["ef/0", "nonsense", [120]]],
        [["ef/0", "<f4", ["x", "y"]]],
        [["ef/0", "<f4", [1.5]]],
        "ef/0 <f4 120",  # not a list
        None,
    ],
)
def test_a_damaged_layout_gives_a_fresh_encoder(layout):
    state, _ = trained_state()
    meta = json.loads(state.config_records[META]["state"])
    state[META] = ConfigRecord({"state": json.dumps(meta | {"layout": layout})})
    assert is_fresh(encoder_state.load_encoder(state, CODEC, SPEC, seed=1))


@pytest.mark.parametrize("text", ["", "{not json", "[]", '{"codec": 1}', '{"integers": {"steps": "x"}}'])
def test_damaged_meta_gives_a_fresh_encoder(text):
    state, _ = trained_state()
    meta = json.loads(state.config_records[META]["state"])
    if text.startswith('{"integers"'):
        text = json.dumps(meta | json.loads(text))
    state[META] = ConfigRecord({"state": text})
    assert is_fresh(encoder_state.load_encoder(state, CODEC, SPEC, seed=1))


def test_a_state_of_another_codec_or_spec_gives_a_fresh_encoder():
    state, _ = trained_state()
    other = Codec.parse("topk:ratio=0.2")
    assert encoder_state.load_encoder(state, other, SPEC, 1).fingerprint == other.encoder(SPEC, 1).fingerprint
    spec = ModelSpec((TensorSpec((30, 4), "float32"),))
    assert encoder_state.load_encoder(state, CODEC, spec, 1).fingerprint == CODEC.encoder(spec, 1).fingerprint
    state["flcomp.encoder.arrays"] = ArrayRecord()  # the layout's arrays are missing
    assert is_fresh(encoder_state.load_encoder(state, CODEC, SPEC, 1))
