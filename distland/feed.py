"""Getting a data split to the device: resident (moved once, the default) or streamed in large chunks.

A grid point is a full pass over the data, so the data must not cross the host↔device link per point when it can
be avoided: :class:`ResidentSplit` moves it once and slices batches on the device. When the data would take more
than :data:`RESIDENT_FRACTION` of the GPU's free memory (or ``engine.stream_data: on``), :class:`StreamedSplit`
keeps it in page-locked host memory, already in the model's memory format, and copies chunks of
:data:`CHUNK_BYTES` into two device buffers on a side CUDA stream, so that the copy of chunk k+1 overlaps the
forward passes over chunk k. On a CPU the same double-buffered path runs with synchronous copies (what the tests
exercise); it is never chosen automatically there, since host memory is the device's memory.
"""
from __future__ import annotations

from typing import Iterator, Optional, Tuple, Union

import torch

RESIDENT_FRACTION = 0.5      # of the GPU's free memory; the rest is for activations, weights and directions
CHUNK_BYTES = 256 << 20      # per streamed chunk: large enough to run the link at full speed

Batch = Tuple[torch.Tensor, torch.Tensor]


def _fmt(x: torch.Tensor, channels_last: bool) -> torch.memory_format:
    return torch.channels_last if channels_last and x.dim() == 4 else torch.contiguous_format


def should_stream(setting: str, nbytes: int, device: torch.device) -> bool:
    """``engine.stream_data``: ``on``/``off``, or ``auto`` — stream when ``nbytes`` of data would take more than
    RESIDENT_FRACTION of the GPU's free memory (never on a CPU)."""
    if setting != "auto":
        return setting == "on"
    if device.type != "cuda":
        return False
    free, _total = torch.cuda.mem_get_info(device)
    return nbytes > RESIDENT_FRACTION * free


class ResidentSplit:
    """A split moved to the device once; batches are views."""

    def __init__(self, x: torch.Tensor, y: torch.Tensor, device: torch.device, channels_last: bool) -> None:
        self.x = x.to(device).contiguous(memory_format=_fmt(x, channels_last))
        self.y = y.to(device)
        self.n = int(self.y.shape[0])

    def batches(self, batch_size: int) -> Iterator[Batch]:
        for start in range(0, self.n, batch_size):
            yield self.x[start:start + batch_size], self.y[start:start + batch_size]


class StreamedSplit:
    """A split kept on the host and copied to the device chunk by chunk, double-buffered."""

    def __init__(self, x: torch.Tensor, y: torch.Tensor, device: torch.device, channels_last: bool,
                 batch_size: int, chunk_bytes: Optional[int] = None) -> None:
        self.device = device
        self.n = int(y.shape[0])
        fmt = _fmt(x, channels_last)
        cuda = device.type == "cuda"
        # Host copy in the model's memory format (a batch slice of NHWC is contiguous, so one DMA per chunk),
        # page-locked where the OS allows it (a non-pinned copy is slower but still correct).
        host_x, host_y = x.contiguous(memory_format=fmt), y.contiguous()
        if cuda:
            try:
                host_x, host_y = host_x.pin_memory(), host_y.pin_memory()
            except RuntimeError:
                pass
        self.x, self.y = host_x, host_y
        per_sample = max(1, x[:1].numel() * x.element_size())
        # Whole batches per chunk, so no batch straddles two chunks (same batches, same sums as resident).
        batches = max(1, (chunk_bytes or CHUNK_BYTES) // (per_sample * batch_size))
        self.chunk = min(self.n, batches * batch_size) if self.n else batch_size
        self.bufs = [(torch.empty((self.chunk, *x.shape[1:]), dtype=x.dtype, device=device).contiguous(
                          memory_format=fmt), torch.empty(self.chunk, dtype=y.dtype, device=device))
                     for _ in range(2)]
        self.copy_stream = torch.cuda.Stream(device) if cuda else None
        self.ready = [torch.cuda.Event() for _ in range(2)] if cuda else []
        self.free = [torch.cuda.Event() for _ in range(2)] if cuda else []

    def _issue(self, k: int, slot: int) -> int:
        """Start copying chunk ``k`` into buffer ``slot``; returns its length."""
        start = k * self.chunk
        n = min(self.chunk, self.n - start)
        bx, by = self.bufs[slot]
        if self.copy_stream is None:
            bx[:n].copy_(self.x[start:start + n])
            by[:n].copy_(self.y[start:start + n])
            return n
        with torch.cuda.stream(self.copy_stream):
            self.copy_stream.wait_event(self.free[slot])  # the forward passes over this buffer's last chunk are done
            bx[:n].copy_(self.x[start:start + n], non_blocking=True)
            by[:n].copy_(self.y[start:start + n], non_blocking=True)
            self.ready[slot].record(self.copy_stream)
        return n

    def batches(self, batch_size: int) -> Iterator[Batch]:
        chunks = -(-self.n // self.chunk)
        lengths = {0: self._issue(0, 0)} if chunks else {}
        for k in range(chunks):
            slot = k % 2
            if k + 1 < chunks:
                lengths[k + 1] = self._issue(k + 1, 1 - slot)   # overlaps the work on this chunk (CUDA)
            if self.copy_stream is not None:
                torch.cuda.current_stream(self.device).wait_event(self.ready[slot])
            bx, by = self.bufs[slot]
            n = lengths.pop(k)
            for start in range(0, n, batch_size):
                yield bx[start:min(n, start + batch_size)], by[start:min(n, start + batch_size)]
            if self.copy_stream is not None:
                self.free[slot].record(torch.cuda.current_stream(self.device))


Split = Union[ResidentSplit, StreamedSplit]


def place(x: torch.Tensor, y: torch.Tensor, device: torch.device, channels_last: bool, batch_size: int,
          stream: bool) -> Split:
    """The split on ``device``: streamed if ``stream``, else resident."""
    if stream:
        return StreamedSplit(x, y, device, channels_last, batch_size)
    return ResidentSplit(x, y, device, channels_last)
