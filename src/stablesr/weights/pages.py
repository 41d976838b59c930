"""Weights that are pages of their model file, and handing those pages back to the page cache.

A model folder's safetensors files are memory-mapped when they load (private, copy-on-write
mappings): every weight is a view into its file, and a page of it counts in the process's memory
only once it has been read. Such a page can be dropped again (`madvise(MADV_DONTNEED)`): the process
stops holding it, the kernel keeps the file in its page cache, and the next read maps it back from
there, bit for bit the file's content. Two uses:

- `packed_weights` (cpu_kernels) holds oneDNN-packed copies of the large weights during sampling; it
  drops the mapped originals meanwhile, so the packed copy replaces them instead of doubling them.
- `streamed_weights` drops every layer's weight pages right after the layer ran (`--stream-weights`):
  the process holds about one layer's weights at a time, and each step maps them back from the page
  cache (exact; slower; the file stays cached by the OS, which may evict it under memory pressure,
  and then the pages come from disk).

Dropping is only safe where no page of the mapping has been written (a written private page is the
only copy of the new value): `clean_mappings` reads each mapping's `Anonymous` count from
/proc/self/smaps and only mappings with none are ever touched. Linux only; elsewhere nothing is
dropped and everything stays as it was.
"""

from __future__ import annotations

import ctypes
import mmap
import sys
from collections.abc import Iterable
from dataclasses import dataclass, field

import torch
from torch import nn

PAGE = mmap.PAGESIZE
MADV_DONTNEED = 4  # Linux (asm-generic/mman-common.h)
MADV_POPULATE_READ = 22  # Linux 5.14+: map a range's pages in one call (older kernels: EINVAL, ignored)
MODEL_SUFFIXES = (".safetensors",)  # the files whose mappings may be dropped


@dataclass(frozen=True)
class FileMapping:
    """One private mapping of a model file: [start, end) in this process, its path and the kB of its pages
    that have been written (copy-on-write copies; a mapping with any is never dropped)."""

    start: int
    end: int
    path: str
    anonymous_kb: int = 0
    rss_kb: int = field(default=0, compare=False)  # resident kB when read (changes; not part of identity)

    def holds(self, address: int) -> bool:
        return self.start <= address < self.end


def file_mappings(suffixes: tuple[str, ...] = MODEL_SUFFIXES) -> list[FileMapping]:
    """The private mappings of files ending in `suffixes`, with their resident and written kB (from
    /proc/self/smaps, read once); [] off Linux."""
    if not sys.platform.startswith("linux"):
        return []
    mappings: list[FileMapping] = []
    current: dict | None = None
    try:
        with open("/proc/self/smaps") as smaps:
            for line in smaps:
                head = line.split(maxsplit=5)
                if len(head) >= 5 and "-" in head[0] and not head[0].endswith(":"):  # a mapping's first line
                    current = None
                    if len(head) == 6 and head[1].endswith("p") and head[5].rstrip().endswith(suffixes):
                        start, end = (int(part, 16) for part in head[0].split("-"))
                        current = {"start": start, "end": end, "path": head[5].rstrip()}
                elif current is not None and line.startswith("Rss:"):
                    current["rss_kb"] = int(line.split()[1])
                elif current is not None and line.startswith("Anonymous:"):  # after Rss in every kernel's smaps
                    mappings.append(FileMapping(**current, anonymous_kb=int(line.split()[1])))
                    current = None
    except OSError:
        return []
    return mappings


def clean_mappings() -> list[FileMapping]:
    """The model-file mappings none of whose pages has been written: the only ones ever dropped."""
    return [mapping for mapping in file_mappings() if mapping.anonymous_kb == 0]


def mapped_bytes(mappings: Iterable[FileMapping] | None = None) -> int:
    """How many bytes of the model-file mappings (all, or those of `mappings`) this process holds now
    (their `Rss`; 0 off Linux)."""
    wanted = None if mappings is None else {(m.start, m.end) for m in mappings}
    return sum(m.rss_kb * 1024 for m in file_mappings() if wanted is None or (m.start, m.end) in wanted)


def _madvise():
    from stablesr.models.cpu_kernels import _libc_function

    function = _libc_function("madvise")
    if function is not None:
        function.argtypes, function.restype = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int], ctypes.c_int
    return function


_MADVISE = _madvise() if sys.platform.startswith("linux") else None


class MappedPages:
    """The pages under some tensors that lie in clean model-file mappings, merged into ranges; `drop()`
    hands them back to the page cache. Tensors elsewhere (in ordinary memory, on a GPU) are ignored."""

    def __init__(self, tensors: Iterable[torch.Tensor], mappings: list[FileMapping], *,
                 whole_files: bool = False) -> None:
        """`whole_files`: the whole mapping of every file that holds one of the tensors (its header, and
        weights of other modules, are read back when needed like any page)."""
        spans = []
        for tensor in tensors:
            if tensor.device.type != "cpu" or tensor.numel() == 0:
                continue
            start = tensor.data_ptr()
            mapping = next((m for m in mappings if m.holds(start)), None)
            if mapping is None:
                continue
            if whole_files:
                spans.append((mapping.start, mapping.end))
                continue
            end = min(start + _span_bytes(tensor), mapping.end)
            # Whole pages, rounded outward: a neighbour sharing an edge page just reads it back.
            spans.append((start // PAGE * PAGE, min(-(-end // PAGE) * PAGE, mapping.end)))
        self.ranges = _merge(spans)

    @property
    def nbytes(self) -> int:
        return sum(end - start for start, end in self.ranges)

    def __bool__(self) -> bool:
        return bool(self.ranges)

    def drop(self) -> int:
        """madvise(MADV_DONTNEED) every range; returns the bytes advised (0 where madvise is unavailable)."""
        return self._advise(MADV_DONTNEED)

    def populate(self) -> int:
        """madvise(MADV_POPULATE_READ) every range: map the cached pages in one call per range instead of a
        fault per few pages (bytes advised; 0 on kernels without it, where reads fault them in as usual)."""
        return self._advise(MADV_POPULATE_READ)

    def _advise(self, advice: int) -> int:
        if _MADVISE is None:
            return 0
        done = 0
        for start, end in self.ranges:
            if _MADVISE(start, end - start, advice) == 0:
                done += end - start
        return done


def _span_bytes(tensor: torch.Tensor) -> int:
    """Bytes from a tensor's first element to just past its last (strided views included)."""
    extent = 1 + sum((size - 1) * stride for size, stride in zip(tensor.shape, tensor.stride()) if size > 0)
    return extent * tensor.element_size()


def _merge(spans: list[tuple[int, int]]) -> list[tuple[int, int]]:
    merged: list[list[int]] = []
    for start, end in sorted(spans):
        if merged and start <= merged[-1][1]:
            merged[-1][1] = max(merged[-1][1], end)
        else:
            merged.append([start, end])
    return [(start, end) for start, end in merged]


def module_tensors(module: nn.Module, recurse: bool = True) -> list[torch.Tensor]:
    return [*module.parameters(recurse=recurse), *module.buffers(recurse=recurse)]


def drop_mapped_weights(modules: Iterable[nn.Module]) -> int:
    """Hand back every page of the model files that `modules` have weights in, now (bytes advised); they
    come back when read."""
    mappings = clean_mappings()
    if not mappings:
        return 0
    tensors = [tensor for module in modules for tensor in module_tensors(module)]
    return MappedPages(tensors, mappings, whole_files=True).drop()


class streamed_weights:  # noqa: N801 (a context manager used like a function)
    """Inside this context every layer below `modules` whose weights are pages of a clean model-file
    mapping hands pages back right after its forward (a forward hook), so the process holds about one
    layer's weights at a time; the weights read are the file's own bytes, so the results are
    bit-identical to resident weights. Layers with weights in ordinary memory (converted dtypes,
    packed or trained weights) are left alone. `layers` counts the hooked layers, `nbytes` their pages.

    Each hook drops every page of the streamed files, not only its layer's: a read fault on a file maps
    the cached pages around it too (fault-around, and whole large folios of the page cache), so a
    layer's reads map parts of its neighbours in passing. A drop over ranges that are mostly unmapped
    costs a walk of their page tables: 0.04 ms for the 3.5 GB file of a full-size UNet (measured).
    Before its forward a layer maps its own pages in one call (`MappedPages.populate`), which is several
    times faster than faulting them in a few pages at a time.
    """

    def __init__(self, modules: Iterable[nn.Module]) -> None:
        self.modules = [module for module in modules if isinstance(module, nn.Module)]
        self.handles: list = []
        self.layers = 0
        self.nbytes = 0

    def __enter__(self) -> streamed_weights:
        mappings = clean_mappings()
        if not mappings:
            return self
        layers = [(layer, pages) for module in self.modules for layer in module.modules()
                  if (pages := MappedPages(module_tensors(layer, recurse=False), mappings))]
        everything = MappedPages([tensor for layer, _ in layers for tensor in module_tensors(layer, recurse=False)],
                                 mappings, whole_files=True)
        for layer, pages in layers:
            self.handles.append(layer.register_forward_pre_hook(_populator(pages)))
            self.handles.append(layer.register_forward_hook(_dropper(everything), always_call=True))
        self.layers, self.nbytes = len(layers), everything.nbytes
        everything.drop()  # start lean: nothing is held until a layer runs
        return self

    def __exit__(self, *exc) -> None:
        for handle in self.handles:
            handle.remove()
        self.handles.clear()


def _populator(pages: MappedPages):
    def hook(module, args):
        pages.populate()

    return hook


def _dropper(pages: MappedPages):
    def hook(module, args, output):
        pages.drop()

    return hook
