"""The engine's GPU-side decisions, checked on a CPU with stand-ins for torch.cuda: the compile rule per device
kind, compile workers per rank, GPUs identified by UUID, ranks sharing a GPU counted and warned about."""
from __future__ import annotations

import os
from types import SimpleNamespace

import pytest
import torch

from distland import engine
from distland.config import EngineConfig
from distland.engine import Engine


def test_the_compile_rule_depends_on_the_device_kind():
    # 300 s of eager work repays a CPU compile (seconds) but not a cold GPU compile (minutes)
    assert engine.worth_compiling(1.0, 300, "cpu") and not engine.worth_compiling(1.0, 300, "cuda:0")
    assert engine.worth_compiling(1.0, 3000, "cuda") and engine.worth_compiling(1.0, 3000, "cpu")
    assert not engine.worth_compiling(0.01, 300, "cpu")
    assert engine.worth_compiling(1.0, 300) == engine.worth_compiling(1.0, 300, "cpu")   # the default is the CPU
    assert engine.COMPILE_WORTH_S["cuda"] > engine.COMPILE_WORTH_S["cpu"]


def test_compile_workers_are_bounded_per_rank(monkeypatch):
    assert engine.compile_threads(Engine(threads=4), {}) == 4
    assert engine.compile_threads(Engine(threads=0), {}) == 1
    assert engine.compile_threads(Engine(threads=4, compile_threads=16), {}) == 16
    assert engine.compile_threads(Engine(threads=4), {"TORCHINDUCTOR_COMPILE_THREADS": "2"}) is None   # theirs
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    assert engine.choose(EngineConfig(device="cpu"), local_size=8, cores=64).compile_threads == 8
    import torch._inductor.config as inductor

    saved = inductor.compile_threads   # (pytest's monkeypatch cannot restore a ConfigModule entry)
    try:
        monkeypatch.delenv("TORCHINDUCTOR_COMPILE_THREADS", raising=False)
        inductor.compile_threads = 32
        engine.apply_process_settings(Engine(threads=torch.get_num_threads()))
        assert inductor.compile_threads == torch.get_num_threads()
        assert os.environ["TORCHINDUCTOR_COMPILE_THREADS"] == str(torch.get_num_threads())
        monkeypatch.setenv("TORCHINDUCTOR_COMPILE_THREADS", "3")
        inductor.compile_threads = 3
        engine.apply_process_settings(Engine(threads=torch.get_num_threads()))
        assert inductor.compile_threads == 3 and os.environ["TORCHINDUCTOR_COMPILE_THREADS"] == "3"
    finally:
        inductor.compile_threads = saved


@pytest.fixture
def two_gpus(monkeypatch):
    """A node whose ranks each see GPUs with the given UUIDs (index → uuid)."""
    uuids = {0: "1111-aaaa", 1: "GPU-2222-bbbb"}
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: len(uuids))
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 0)
    monkeypatch.setattr(torch.cuda, "get_device_properties", lambda i: SimpleNamespace(uuid=uuids[i], name="fake"))
    return uuids


def test_each_rank_records_its_gpu_by_uuid(two_gpus):
    assert engine.device_id("cuda:0") == "GPU-1111-aaaa" and engine.device_id("cuda:1") == "GPU-2222-bbbb"
    assert engine.device_id("cuda") == "GPU-1111-aaaa" and engine.device_id("cpu") == "cpu"
    line = engine.device_line(Engine(device="cuda:1", threads=4), 3, "node7")
    assert line == "rank 3 host node7 device cuda:1 gpu GPU-2222-bbbb threads 4"
    assert engine.device_line(Engine(device="cpu", threads=2), 0, "n") == "rank 0 host n device cpu threads 2"
    # local ranks go round the visible GPUs
    assert [engine.choose(EngineConfig(), local_rank=r, local_size=4).device for r in range(4)] == \
        ["cuda:0", "cuda:1", "cuda:0", "cuda:1"]


def test_a_gpu_rank_compiles_on_its_share_of_the_cores(two_gpus, monkeypatch):
    # 8 ranks on a 64-core node: 8 compile workers each (not 8 x 32), while each runs 4 torch threads
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    eng = engine.choose(EngineConfig(), local_rank=5, local_size=8, cores=64)
    assert eng.device == "cuda:1" and eng.threads == 4 and eng.compile_threads == 8
    assert eng.batch_size == engine.GPU_BATCH


def test_ranks_sharing_a_gpu_are_counted_per_host_and_uuid():
    ids = [("n1", "GPU-a"), ("n1", "GPU-a"), ("n1", "GPU-b"), ("n2", "GPU-a"), ("n1", "cpu"), ("n1", "cpu")]
    assert engine.ranks_per_device(ids) == [2, 2, 1, 1, 1, 1]
    message = engine.sharing_warning(ids)
    assert "2 on GPU-a on n1" in message and "exclusive-process" in message and "GPU-b" not in message
    assert engine.sharing_warning([("n1", "GPU-a"), ("n1", "GPU-b"), ("n2", "GPU-a")]) is None
    assert engine.sharing_warning([("n1", "cpu")] * 4) is None


class _FakeComm:
    def __init__(self, rank, ids):
        self.rank, self.host, self.ids = rank, ids[rank][0], ids

    @property
    def is_root(self):
        return self.rank == 0

    def allgather(self, obj):
        assert obj == self.ids[self.rank]   # what this rank contributes: its host and its GPU's UUID
        return list(self.ids)


def test_count_ranks_on_device_warns_once_on_the_root(two_gpus, capsys):
    # Two ranks under --gpus-per-task both call their GPU cuda:0, but it is the same card only on the same host.
    ids = [("n1", "GPU-1111-aaaa"), ("n1", "GPU-1111-aaaa"), ("n2", "GPU-1111-aaaa")]
    assert engine.count_ranks_on_device(Engine(device="cuda:0"), _FakeComm(0, ids)) == 2
    assert "distland: warning: ranks share GPUs (2 on GPU-1111-aaaa on n1)" in capsys.readouterr().err
    assert engine.count_ranks_on_device(Engine(device="cuda:0"), _FakeComm(2, ids)) == 1
    assert capsys.readouterr().err == ""


def test_exact_float32_turns_tf32_off_inside_and_restores_it():
    # What the Hessian and the precision check rely on in a TF32 job; the flags exist on CPU builds too.
    import torch

    from distland.engine import exact_float32

    saved = (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32)
    try:
        torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = True
        with exact_float32(torch.device("cuda", 0)):
            assert not torch.backends.cuda.matmul.allow_tf32 and not torch.backends.cudnn.allow_tf32
        assert torch.backends.cuda.matmul.allow_tf32 and torch.backends.cudnn.allow_tf32
        with pytest.raises(RuntimeError), exact_float32(torch.device("cuda", 0)):
            raise RuntimeError("a failing product")
        assert torch.backends.cuda.matmul.allow_tf32 and torch.backends.cudnn.allow_tf32   # restored on errors
        with exact_float32(torch.device("cpu")):   # nothing to change on a CPU
            assert torch.backends.cudnn.allow_tf32
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = saved
