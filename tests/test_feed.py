"""Streamed data (double-buffered chunks, for data that does not fit on the GPU) gives exactly the resident batches
and the resident results; the choice between them is recorded."""
from __future__ import annotations

import json

import h5py
import pytest
import torch

from distland import directions as D
from distland import feed
from distland.config import ConfigError
from distland.engine import Engine
from distland.evaluate import SurfaceEvaluator
from distland.sweep import run_surface

from conftest import make_model, small_config


@pytest.mark.parametrize("n,batch,chunk_batches", [(103, 10, 3), (100, 10, 5), (7, 10, 1), (30, 4, 100)])
def test_streamed_batches_equal_the_resident_ones(n, batch, chunk_batches):
    x = torch.randn(n, 3, 5, 5)
    y = torch.randint(0, 10, (n,))
    per_sample = 3 * 5 * 5 * 4
    streamed = feed.StreamedSplit(x, y, torch.device("cpu"), True, batch, chunk_bytes=chunk_batches * batch * per_sample)
    resident = feed.ResidentSplit(x, y, torch.device("cpu"), True)
    # The buffers are reused chunk after chunk: a consumer must use each batch before asking for the next.
    got = [(bx.clone(), by.clone()) for bx, by in streamed.batches(batch)]
    want = list(resident.batches(batch))
    assert [len(b) for b, _ in got] == [len(b) for b, _ in want]
    for (gx, gy), (wx, wy) in zip(got, want):
        assert torch.equal(gx, wx) and torch.equal(gy, wy)
    assert streamed.chunk % batch == 0 or streamed.chunk == n
    assert len(streamed.bufs) == 2 and streamed.bufs[0][0].shape[0] == streamed.chunk
    assert streamed.bufs[0][0].is_contiguous(memory_format=torch.channels_last)
    # Two passes over the same split give the same batches (the buffers hold no state between passes).
    again = [(bx.clone(), by.clone()) for bx, by in streamed.batches(batch)]
    assert all(torch.equal(a[0], b[0]) for a, b in zip(got, again))


def test_auto_never_streams_on_a_cpu_and_on_off_are_obeyed():
    cpu = torch.device("cpu")
    assert not feed.should_stream("auto", 1 << 40, cpu)
    assert feed.should_stream("on", 1, cpu)
    assert not feed.should_stream("off", 1 << 40, cpu)


def test_streaming_evaluator_is_bit_identical_to_resident(monkeypatch):
    model = make_model("democnn", seed=2)
    ref = D.reference_weights(model)
    dirs = D.make_random(ref, 0, "filter", "biasbn", 2)
    x, y = torch.randn(150, 1, 8, 8), torch.randint(0, 10, (150,))
    # Chunks of a few batches, so the double buffer really turns over several times.
    monkeypatch.setattr(feed, "CHUNK_BYTES", 3 * 16 * 64 * 4)
    streamed = SurfaceEvaluator(model, ref, dirs, {"train": (x, y), "test": (x[:37], y[:37])},
                                Engine(batch_size=16, channels_last=True, fold_bn=True, stream_data="on"))
    resident = SurfaceEvaluator(model, ref, dirs, {"train": (x, y), "test": (x[:37], y[:37])},
                                Engine(batch_size=16, channels_last=True, fold_bn=True, stream_data="auto"))
    assert isinstance(streamed.data["train"], feed.StreamedSplit) and streamed.engine.stream_data == "on"
    assert isinstance(resident.data["train"], feed.ResidentSplit) and resident.engine.stream_data == "off"
    assert streamed.data["train"].chunk == 48
    for point in [(0.0, 0.0), (0.3, -0.7), (-1.0, 0.5)]:
        assert streamed.evaluate(point) == resident.evaluate(point)


def test_the_resolved_choice_is_recorded_in_the_file(tmp_path, digits_train):
    out = tmp_path / "s.h5"
    run_surface(small_config(out, "engine.stream_data=on"))
    with h5py.File(out, "r") as f:
        assert json.loads(f.attrs["engine"])["stream_data"] == "on"
    run_surface(small_config(tmp_path / "r.h5"))
    with h5py.File(tmp_path / "r.h5", "r") as f:
        assert json.loads(f.attrs["engine"])["stream_data"] == "off"


def test_a_bad_setting_names_the_choices():
    with pytest.raises(ConfigError, match="engine.stream_data.*auto"):
        small_config("x.h5", "engine.stream_data=sometimes")
