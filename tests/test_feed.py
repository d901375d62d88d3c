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


# ------------------------------------------------------------------------------ the CUDA path, with stand-ins
class _Recorder:
    """Stand-ins for torch.cuda's Stream, Event, stream() and current_stream() that log every call by name."""

    def __init__(self):
        self.log = []
        self.current = self.Stream("current")
        self.events = 0

    def Stream(self, device=None):   # noqa: N802 - mirrors torch.cuda.Stream
        rec = self if device != "current" else None

        class S:
            name = "copy" if rec is not None else "current"

            def wait_event(s, ev):
                log.append(f"{s.name} waits {ev.name}")

            def wait_stream(s, other):
                log.append(f"{s.name} waits stream {other.name}")

        log = self.log
        return S()

    def Event(self):   # noqa: N802
        log = self.log
        self.events += 1
        # feed creates ready0, ready1, then free0, free1
        name = ["ready0", "ready1", "free0", "free1"][self.events - 1]

        class E:
            def record(e, stream):
                log.append(f"{stream.name} records {e.name}")

            def synchronize(e):
                log.append(f"host waits {e.name}")

        ev = E()
        ev.name = name
        return ev

    def stream(self, s):
        import contextlib
        return contextlib.nullcontext()

    def current_stream(self, device=None):
        return self.current


def test_the_stream_protocol_orders_every_copy_and_every_use(monkeypatch):
    """The asynchronous path's order of operations: each pass starts with the copy stream waiting for the current
    stream (no free event exists yet on the first pass, and the buffers' first users are on the current stream); a
    chunk is copied into a buffer only after the forward passes over its previous chunk are done (free), used only
    after its copy is (ready); the host rewrites a staging buffer only after its last transfer finished."""
    rec = _Recorder()
    for name in ("Stream", "Event", "stream", "current_stream"):
        monkeypatch.setattr(torch.cuda, name, getattr(rec, name))
    monkeypatch.setattr(feed, "_pinned", lambda shape, dtype, fmt: torch.empty(shape, dtype=dtype, memory_format=fmt))
    n, batch = 30, 5
    x, y = torch.randn(n, 3, 4, 4), torch.randint(0, 10, (n,))
    split = feed.StreamedSplit(x, y, torch.device("cpu"), True, batch, chunk_bytes=2 * batch * 3 * 16 * 4,
                               streams=True)
    assert split.chunk == 10 and len(split.staging) == 2
    assert split.staging[0][0].is_contiguous(memory_format=torch.channels_last)
    issue = ["host waits ready{s}", "copy waits free{s}", "copy records ready{s}"]

    def chunk_ops(s):
        return [op.format(s=s) for op in issue]

    want = (["copy waits stream current"] + chunk_ops(0) + chunk_ops(1)
            + ["current waits ready0", "use 0", "use 1", "current records free0"] + chunk_ops(0)
            + ["current waits ready1", "use 2", "use 3", "current records free1"]
            + ["current waits ready0", "use 4", "use 5", "current records free0"])
    resident = list(feed.ResidentSplit(x, y, torch.device("cpu"), True).batches(batch))
    for _ in range(2):   # the second pass follows the same protocol
        rec.log.clear()
        for i, (bx, by) in enumerate(split.batches(batch)):
            rec.log.append(f"use {i}")
            assert torch.equal(bx, resident[i][0]) and torch.equal(by, resident[i][1])
        assert rec.log == want


def test_a_failed_pin_warns_and_streams_from_pageable_memory(monkeypatch):
    rec = _Recorder()
    for name in ("Stream", "Event", "stream", "current_stream"):
        monkeypatch.setattr(torch.cuda, name, getattr(rec, name))
    monkeypatch.setattr(feed, "_pinned", lambda shape, dtype, fmt: None)
    x, y = torch.randn(12, 3, 4, 4), torch.randint(0, 10, (12,))
    with pytest.warns(UserWarning, match="could not page-lock.*ulimit -l"):
        split = feed.StreamedSplit(x, y, torch.device("cpu"), True, 4, chunk_bytes=4 * 3 * 16 * 4, streams=True)
    assert split.staging == []
    got = [(bx.clone(), by.clone()) for bx, by in split.batches(4)]
    assert torch.equal(torch.cat([g[0] for g in got]), x) and torch.equal(torch.cat([g[1] for g in got]), y)
    assert not any(op.startswith("host waits") for op in rec.log)   # nothing staged, nothing to wait for


def test_the_split_holds_no_second_host_copy():
    x, y = torch.randn(20, 3, 4, 4), torch.randint(0, 10, (20,))
    split = feed.StreamedSplit(x, y, torch.device("cpu"), True, 4)
    assert split.x.data_ptr() == x.data_ptr() and split.y.data_ptr() == y.data_ptr()


def test_resident_data_is_allocated_in_its_format_on_the_device(monkeypatch):
    """Off the CPU the data is written chunk by chunk into a tensor allocated in the model's memory format (the
    meta device stands in for a GPU: it checks shapes and formats, not values)."""
    monkeypatch.setattr(feed, "CHUNK_BYTES", 7 * 3 * 16 * 4)   # 7 samples per chunk: 3 chunks for 20
    x, y = torch.randn(20, 3, 4, 4), torch.randint(0, 10, (20,))
    seen = []
    real = torch.Tensor.contiguous

    def spy(t, memory_format=torch.contiguous_format):
        seen.append((t.device.type, t.shape[0]))
        return real(t, memory_format=memory_format)

    monkeypatch.setattr(torch.Tensor, "contiguous", spy)
    split = feed.ResidentSplit(x, y, torch.device("meta"), True)
    assert split.x.device.type == "meta" and split.x.shape == x.shape
    assert split.x.is_contiguous(memory_format=torch.channels_last)
    assert seen == [("cpu", 7), ("cpu", 7), ("cpu", 6)]   # converted on the host, a chunk at a time


def test_ranks_sharing_a_gpu_split_its_memory(monkeypatch):
    gib = 1 << 30
    assert feed.fits_resident(30 * gib, free=80 * gib, total=80 * gib, ranks_on_device=1)
    assert not feed.fits_resident(30 * gib, free=80 * gib, total=80 * gib, ranks_on_device=2)
    assert feed.fits_resident(15 * gib, free=80 * gib, total=80 * gib, ranks_on_device=2)
    assert not feed.fits_resident(15 * gib, free=20 * gib, total=80 * gib, ranks_on_device=2)   # others took it
    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda device=None: (80 * gib, 80 * gib))
    gpu = torch.device("cuda:0")
    assert not feed.should_stream("auto", 30 * gib, gpu, 1)
    assert feed.should_stream("auto", 30 * gib, gpu, 2)
    assert not feed.should_stream("off", 30 * gib, gpu, 8)
