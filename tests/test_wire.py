"""The wire format and the worker loop every remote backend shares: round trips, damage, versions."""

from __future__ import annotations

import functools

import numpy as np
import pytest
from tiny_data import make_tiny_data_dir, tiny_request

from diffviews.backends import wire
from diffviews.backends.local import LocalBackend
from diffviews.backends.protocol import GenerationRequest
from diffviews.backends.worker import serve_request


def test_wire_round_trip_and_malformed_messages():
    value = {"a": (1, 2.5, "x", None, True), "b": [np.arange(6, dtype=np.int16).reshape(2, 3)],
             "c": np.float32(1.5), "d": np.zeros((0, 4), dtype=np.float64), "e": np.arange(12)[::3]}
    back = wire.decode(wire.encode(value))
    assert back["a"] == (1, 2.5, "x", None, True) and back["c"] == 1.5
    np.testing.assert_array_equal(back["b"][0], value["b"][0])
    np.testing.assert_array_equal(back["e"], [0, 3, 6, 9])
    assert back["b"][0].dtype == np.int16 and back["d"].shape == (0, 4)
    with pytest.raises(wire.WireError, match="dtype object"):
        wire.encode({"x": np.array([object()])})
    with pytest.raises(wire.WireError, match="dict key 3"):
        wire.encode({3: 1})
    with pytest.raises(wire.WireError, match="malformed wire message"):
        wire.decode(b"PKL0" + bytes(20))
    data = wire.encode({"x": np.ones(10)})
    with pytest.raises(wire.WireError, match="malformed wire message"):
        wire.decode(data[:-8])
    with pytest.raises(wire.WireError, match="nested deeper than 32"):
        wire.encode(functools.reduce(lambda inner, _: [inner], range(40), 1))


def test_wire_decode_raises_only_wire_error_on_any_damage():
    """Truncations, flipped bytes, deep nesting, bad references: WireError and nothing else."""
    good = wire.encode({"op": "generate", "payload": tiny_request()})
    rng = np.random.default_rng(0)
    damaged = [good[:n] for n in (0, 3, 8, 9, 40, len(good) // 2, len(good) - 1)]
    for _ in range(300):
        b = bytearray(good)
        for i in rng.integers(0, len(b), rng.integers(1, 4)):
            b[i] = int(rng.integers(0, 256))
        damaged.append(bytes(b))
    body = "[" * 5000 + "]" * 5000
    for text in (body, '{"__array__": "a9"}', '{"__dataclass__": "Evil"}', '{"__tuple__": 3}',
                 '{"__dataclass__": "FitResult", "embedding": 1}'):
        damaged.append(_with_body(text))
    for data in damaged:
        try:
            wire.decode(data)
        except wire.WireError:
            pass


def _with_body(text: str) -> bytes:
    from safetensors.numpy import save

    return save({}, metadata={"diffviews": text})


def test_wire_fields_at_their_default_are_not_sent_so_an_older_peer_still_decodes(monkeypatch):
    import dataclasses

    @dataclasses.dataclass
    class Newer:  # a later GenerationRequest with one more field
        model: str
        steer: float = 0.0

    Newer.__name__ = "GenerationRequest"
    with monkeypatch.context() as m:  # the sending side knows the newer class
        m.setitem(wire._registry, "GenerationRequest", Newer)
        plain = wire.to_plain(Newer("digits"))
    assert plain == {"__dataclass__": "GenerationRequest", "model": "digits"}
    assert wire.from_plain(plain) == GenerationRequest(model="digits")
    with pytest.raises(wire.WireError, match=r"has no field\(s\) \['steer'\]"):
        wire.from_plain({"__dataclass__": "GenerationRequest", "model": "digits", "steer": 0.5})


def test_serve_request_answers_every_bad_message_with_an_error(tmp_path):
    local = LocalBackend(make_tiny_data_dir(tmp_path), device="cpu")
    for payload in (b"", b"garbage", wire.encode([1, 2]), wire.encode({"op": "rm -rf", "payload": None}),
                    wire.encode({"op": "layer_shapes", "payload": "no-such-model"})):
        reply = wire.decode(serve_request(local, payload))
        assert set(reply) == {"error"} and reply["error"]["message"]
