"""Getting a data split to the device: resident (moved once, the default) or streamed in large chunks.

A grid point is a full pass over the data, so the data must not cross the host↔device link per point when it can
be avoided: :class:`ResidentSplit` moves it once and slices batches on the device. When the data would take more
than :data:`RESIDENT_FRACTION` of this rank's share of the GPU's memory (or ``engine.stream_data: on``),
:class:`StreamedSplit` keeps it on the host and copies chunks of :data:`CHUNK_BYTES` into two device buffers on a
side CUDA stream, so that the copy of chunk k+1 overlaps the forward passes over chunk k. On a CPU the same
double-buffered path runs with synchronous copies (what the tests exercise); it is never chosen automatically
there, since host memory is the device's memory.

Memory: a rank holds one host copy of its data (the caller's); moving it to a GPU goes chunk by chunk, converted
to the model's memory format on the host, straight into a device tensor allocated in that format (a format
change inside a host→device copy would allocate a second, temporary, device copy). Streaming stages each chunk
through two page-locked buffers of CHUNK_BYTES instead of pinning a second copy of the whole data set.
"""
from __future__ import annotations

import warnings
from typing import Iterator, List, Optional, Tuple, Union

import torch

RESIDENT_FRACTION = 0.5      # of a rank's share of the GPU; the rest is for activations, weights and directions
CHUNK_BYTES = 256 << 20      # per streamed chunk: large enough to run the link at full speed

Batch = Tuple[torch.Tensor, torch.Tensor]


def _fmt(x: torch.Tensor, channels_last: bool) -> torch.memory_format:
    return torch.channels_last if channels_last and x.dim() == 4 else torch.contiguous_format


def fits_resident(nbytes: int, free: int, total: int, ranks_on_device: int = 1) -> bool:
    """Whether ``nbytes`` of data may live on a GPU with ``free`` of ``total`` bytes free, shared by
    ``ranks_on_device`` ranks. Each rank gets RESIDENT_FRACTION of its share of the card (ranks start together
    and each sees the same free memory, so the free memory alone would let every one of them take half the card),
    and never more than RESIDENT_FRACTION of what is free now."""
    share = min(free, total // max(1, ranks_on_device))
    return nbytes <= RESIDENT_FRACTION * share


def should_stream(setting: str, nbytes: int, device: torch.device, ranks_on_device: int = 1) -> bool:
    """``engine.stream_data``: ``on``/``off``, or ``auto`` — stream when ``nbytes`` of data would not fit this
    rank's share of the GPU (:func:`fits_resident`; never on a CPU)."""
    if setting != "auto":
        return setting == "on"
    if device.type != "cuda":
        return False
    free, total = torch.cuda.mem_get_info(device)
    return not fits_resident(nbytes, free, total, ranks_on_device)


def _rows_per_chunk(x: torch.Tensor, chunk_bytes: int) -> int:
    return max(1, chunk_bytes // max(1, x[:1].numel() * x.element_size()))


class ResidentSplit:
    """A split moved to the device once; batches are views."""

    def __init__(self, x: torch.Tensor, y: torch.Tensor, device: torch.device, channels_last: bool) -> None:
        fmt = _fmt(x, channels_last)
        if device.type == "cpu":
            self.x = x.contiguous(memory_format=fmt)   # the caller's tensor itself when already in this format
        else:
            # Allocated in the target format and filled chunk by chunk from host chunks in that format: each copy
            # is one plain transfer, and no second device copy of the data ever exists.
            self.x = torch.empty(x.shape, dtype=x.dtype, device=device, memory_format=fmt)
            rows = _rows_per_chunk(x, CHUNK_BYTES)
            for start in range(0, int(x.shape[0]), rows):
                self.x[start:start + rows].copy_(x[start:start + rows].contiguous(memory_format=fmt))
        self.y = y.to(device)
        self.n = int(self.y.shape[0])

    def batches(self, batch_size: int) -> Iterator[Batch]:
        for start in range(0, self.n, batch_size):
            yield self.x[start:start + batch_size], self.y[start:start + batch_size]


def _pinned(shape: Tuple[int, ...], dtype: torch.dtype, fmt: torch.memory_format) -> Optional[torch.Tensor]:
    try:
        return torch.empty(shape, dtype=dtype, memory_format=fmt, pin_memory=True)
    except RuntimeError:
        return None


class StreamedSplit:
    """A split kept on the host and copied to the device chunk by chunk, double-buffered.

    ``streams`` (default: on a CUDA device) selects the asynchronous path: page-locked staging buffers, copies on
    a side stream, events between the streams. The tests run it on a CPU with stand-ins for the CUDA stream API.
    """

    def __init__(self, x: torch.Tensor, y: torch.Tensor, device: torch.device, channels_last: bool,
                 batch_size: int, chunk_bytes: Optional[int] = None, streams: Optional[bool] = None) -> None:
        self.device = device
        self.n = int(y.shape[0])
        self.fmt = fmt = _fmt(x, channels_last)
        self.x, self.y = x, y   # the caller's copy: no second host copy of the data
        # Whole batches per chunk, so no batch straddles two chunks (same batches, same sums as resident).
        batches = max(1, _rows_per_chunk(x, chunk_bytes or CHUNK_BYTES) // batch_size)
        self.chunk = min(self.n, batches * batch_size) if self.n else batch_size
        shape = (self.chunk, *x.shape[1:])
        # Allocated in the target format directly: `.contiguous(format)` on a fresh tensor would launch a copy
        # kernel on the current stream that the copy stream does not know about.
        self.bufs = [(torch.empty(shape, dtype=x.dtype, device=device, memory_format=fmt),
                      torch.empty(self.chunk, dtype=y.dtype, device=device)) for _ in range(2)]
        self.streams = device.type == "cuda" if streams is None else streams
        self.staging: List[Tuple[torch.Tensor, torch.Tensor]] = []
        if self.streams:
            self.copy_stream = torch.cuda.Stream(device)
            self.ready = [torch.cuda.Event() for _ in range(2)]   # chunk in slot s is on the device
            self.free = [torch.cuda.Event() for _ in range(2)]    # forward passes over slot s are done
            if device.type == "cuda":   # the buffers are written on the copy stream: the allocator must know
                for bx, by in self.bufs:
                    bx.record_stream(self.copy_stream)
                    by.record_stream(self.copy_stream)
            for _ in range(2):
                sx, sy = _pinned(shape, x.dtype, fmt), _pinned((self.chunk,), y.dtype, torch.contiguous_format)
                if sx is None or sy is None:
                    mib = self.chunk * x[:1].numel() * x.element_size() >> 20
                    warnings.warn(f"could not page-lock 2 x {mib} MiB of host memory "
                                  "for streaming (check `ulimit -l`); copies from pageable memory are slower and "
                                  "do not overlap the forward passes")
                    self.staging = []
                    break
                self.staging.append((sx, sy))

    def _issue(self, k: int, slot: int) -> int:
        """Start copying chunk ``k`` into buffer ``slot``; returns its length."""
        start = k * self.chunk
        n = min(self.chunk, self.n - start)
        bx, by = self.bufs[slot]
        src_x, src_y = self.x[start:start + n], self.y[start:start + n]
        if not self.streams:
            bx[:n].copy_(src_x)
            by[:n].copy_(src_y)
            return n
        if self.staging:
            # The staging buffer's previous transfer (chunk k-2) must be finished before the host rewrites it.
            self.ready[slot].synchronize()
            sx, sy = self.staging[slot]
            sx[:n].copy_(src_x)   # converts to the model's memory format on the host
            sy[:n].copy_(src_y)
            src_x, src_y = sx[:n], sy[:n]
        else:
            src_x, src_y = src_x.contiguous(memory_format=self.fmt), src_y
        with torch.cuda.stream(self.copy_stream):
            self.copy_stream.wait_event(self.free[slot])  # the forward passes over this buffer's last chunk are done
            bx[:n].copy_(src_x, non_blocking=True)
            by[:n].copy_(src_y, non_blocking=True)
            self.ready[slot].record(self.copy_stream)
        return n

    def batches(self, batch_size: int) -> Iterator[Batch]:
        chunks = -(-self.n // self.chunk)
        current = torch.cuda.current_stream(self.device) if self.streams else None
        if current is not None:
            # Whatever the current stream has queued (the buffers' first users, the last pass's forward passes on
            # another code path) comes before this pass's copies; on the first pass no `free` event is recorded.
            self.copy_stream.wait_stream(current)
        lengths = {0: self._issue(0, 0)} if chunks else {}
        for k in range(chunks):
            slot = k % 2
            if k + 1 < chunks:
                lengths[k + 1] = self._issue(k + 1, 1 - slot)   # overlaps the work on this chunk (CUDA)
            if current is not None:
                current.wait_event(self.ready[slot])
            bx, by = self.bufs[slot]
            n = lengths.pop(k)
            for start in range(0, n, batch_size):
                yield bx[start:min(n, start + batch_size)], by[start:min(n, start + batch_size)]
            if current is not None:
                self.free[slot].record(current)


DeviceSplit = Union[ResidentSplit, StreamedSplit]


def place(x: torch.Tensor, y: torch.Tensor, device: torch.device, channels_last: bool, batch_size: int,
          stream: bool) -> DeviceSplit:
    """The split on ``device``: streamed if ``stream``, else resident."""
    if stream:
        return StreamedSplit(x, y, device, channels_last, batch_size)
    return ResidentSplit(x, y, device, channels_last)
