"""Faster CPU kernels for inference, same numbers within float rounding.

Two measured causes of lost CPU time (docs/performance.md, "CPU kernels"):

1. `nn.Linear` runs on the BLAS library torch was built with (MKL). On some CPUs (AMD Zen 5 here) its
   fp32 GEMM reaches about half the throughput of oneDNN, the library behind torch's convolutions. A
   linear layer over tokens is a 1x1 convolution over a channels-last image, and torch hands that to
   oneDNN without copying anything: `ConvLinear` does exactly that for CPU inputs with enough rows.
   The bias is fused, so the output is no longer first filled with the broadcast bias either.
2. glibc returns every freed block above its mmap threshold (128 KB at start) to the OS, so each new
   activation of a UNet step is fresh memory that faults in page by page. `tune_cpu_allocator` raises
   the threshold to its maximum (32 MB) and stops trimming, so freed activations are reused. It is
   process-wide, so the command line turns it on; a library user calls it when the process is theirs.

3. A convolution with plain weights reorders them into oneDNN's blocked layout on every call; for
   the weight-heavy layers of the UNet's low resolutions that reorder is most of the time.
   `packed_weights` holds those weights packed for the length of a sampling run (bit-exact restore).

`use_conv_linears(module)` swaps the class of every plain `nn.Linear` below `module` for `ConvLinear`
(same parameters, same state dict, still an `nn.Linear`); `use_conv_linears(module, False)` swaps
them back. Off the CPU, or for few rows, `ConvLinear` is `nn.Linear`.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os

import torch
import torch.nn.functional as F
from torch import nn

MIN_ROWS = 64  # fewer rows (a time embedding, a 77-token context) stay on the BLAS path
CONV_DTYPES = (torch.float32,)  # bf16 linears already run on oneDNN (measured: no gain as a 1x1 conv)
ALLOCATOR_ENV = "STABLESR_MALLOC_TUNING"  # "0" leaves glibc's allocator alone

_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3  # mallopt parameters (glibc malloc.h)
_MMAP_THRESHOLD_MAX = 32 * 1024 * 1024  # glibc's ceiling on 64-bit: 4 * 1024 * 1024 * sizeof(long)
_allocator_tuned = False


def conv_linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    """`F.linear(x, weight, bias)` as a 1x1 convolution over the rows of x viewed channels-last.

    x (..., N, C_in) -> (..., N, C_out). The (B, N, C) rows are a (B, C, N, 1) image whose channels are
    the fastest dimension, which is what oneDNN's channels-last convolution reads; its output comes back
    channels-last, i.e. already laid out as (B, N, C_out). No copy is made when x is contiguous; other
    inputs (rows transposed from a (B, C, H, W) map) give a contiguous output too, as F.linear does,
    which is what the attention kernels after it need.
    """
    return _rows_as_image(x, weight.shape[0], lambda image: F.conv2d(image, weight[:, :, None, None], bias))


def _rows_as_image(x: torch.Tensor, out_features: int, conv) -> torch.Tensor:
    """conv((B, C_in, N, 1) channels-last view of the rows of x) -> (..., N, out_features), contiguous."""
    rows = x.reshape(-1, x.shape[-2], x.shape[-1])  # (B, N, C_in), a view for contiguous x
    out = conv(rows.unsqueeze(2).permute(0, 3, 1, 2))  # (B, C_out, N, 1), channels-last for contiguous x
    out = out.permute(0, 2, 3, 1).reshape(*x.shape[:-1], out_features)
    return out if out.is_contiguous() else out.contiguous()


class ConvLinear(nn.Linear):
    """An `nn.Linear` whose CPU forward with at least `MIN_ROWS` rows runs as `conv_linear` (oneDNN).

    Equal to `nn.Linear.forward` within float rounding (a different summation order); everything
    else (parameters, state dict, autograd) is the same module.
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if (x.device.type == "cpu" and x.dtype in CONV_DTYPES and x.dim() >= 2 and x.shape[-2] >= MIN_ROWS
                and self.weight.dtype == x.dtype):
            return conv_linear(x, self.weight, self.bias)
        return super().forward(x)


def use_conv_linears(module: nn.Module, enable: bool = True) -> int:
    """Swap every plain `nn.Linear` below `module` to `ConvLinear` (or back with enable=False).

    Returns how many layers were swapped. Subclasses of nn.Linear other than ConvLinear are left
    alone (they may have a forward of their own).
    """
    source, target = (nn.Linear, ConvLinear) if enable else (ConvLinear, nn.Linear)
    swapped = 0
    for layer in module.modules():
        if type(layer) is source:
            layer.__class__ = target
            swapped += 1
    return swapped


def tune_cpu_allocator() -> bool:
    """Keep freed activations in the process instead of returning them to the OS (glibc only).

    Raises glibc's mmap threshold to its maximum (32 MB) and stops heap trimming, so a block freed by
    one layer serves the next layer's allocation without page faults. Peak memory is unchanged
    (measured: 4.98 GB vs 5.00 GB for a full-size StableSR step); memory freed after the peak is kept
    for reuse rather than given back. Returns True when applied (once per process); False on a libc
    without mallopt or when STABLESR_MALLOC_TUNING=0.
    """
    global _allocator_tuned
    if _allocator_tuned:
        return True
    if os.environ.get(ALLOCATOR_ENV, "1") == "0":
        return False
    mallopt = _libc_function("mallopt")
    if mallopt is None:
        return False  # not glibc (macOS, Windows, musl without mallopt)
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    _allocator_tuned = bool(mallopt(_M_MMAP_THRESHOLD, _MMAP_THRESHOLD_MAX)) and bool(
        mallopt(_M_TRIM_THRESHOLD, 2**31 - 1))
    return _allocator_tuned


def release_free_memory() -> bool:
    """Give the heap's free pages back to the OS (glibc `malloc_trim(0)`), so that a following RSS probe
    sees a call's own growth rather than reusing what an earlier call freed. False where unavailable."""
    malloc_trim = _libc_function("malloc_trim")
    return malloc_trim is not None and bool(malloc_trim(0))


def _libc_function(name: str):
    """The C library's function `name`, or None where there is no such library or function."""
    try:
        return getattr(ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6"), name)
    except (OSError, AttributeError):
        return None


def allocator_tuned() -> bool:
    """Whether `tune_cpu_allocator` has been applied in this process."""
    return _allocator_tuned


# --------------------------------------------------------------------------- packed weights for sampling
PACK_MIN_BYTES = 16 * 2**20  # layers this large are weight-bound on the UNet's 8x8 and 16x16 maps
PACK_MIN_STEPS = 20  # packing and unpacking cost about one step: worth it from this many steps on


def _pack(weight: torch.Tensor, layer, input_size: list[int]) -> torch.Tensor:
    """The oneDNN blocked copy of a (C_out, C_in, kh, kw) fp32 weight, as the convolution of `layer` (its
    padding, stride, dilation, groups) reads it."""
    return torch._C._nn.mkldnn_reorder_conv2d_weight(
        weight.to_mkldnn(), list(layer.padding), list(layer.stride), list(layer.dilation), layer.groups, input_size)


def _packed_conv(x: torch.Tensor, layer: nn.Conv2d) -> torch.Tensor:
    if torch.is_grad_enabled() or x.device.type != "cpu" or x.dtype != torch.float32:
        raise RuntimeError("a layer with packed weights runs fp32 CPU inference only (inside packed_weights)")
    return torch.ops.mkldnn._convolution_pointwise(
        x, layer._packed_weight, layer.bias, list(layer.padding), list(layer.stride), list(layer.dilation),
        layer.groups, "none", [], "")


class PackedConv2d(nn.Conv2d):
    """An nn.Conv2d whose weight lives in oneDNN's blocked layout while `packed_weights` is active."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return _packed_conv(x, self).contiguous()  # oneDNN answers channels-last; the UNet expects NCHW


class PackedConvLinear(ConvLinear):
    """A ConvLinear whose weight lives in oneDNN's blocked layout while `packed_weights` is active."""

    padding, stride, dilation, groups = (0, 0), (1, 1), (1, 1), 1  # a 1x1 convolution's geometry

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return _rows_as_image(x, self.out_features, lambda image: _packed_conv(image, self))


def _packable(layer: nn.Module, min_bytes: int) -> bool:
    weight = getattr(layer, "weight", None)
    if weight is None or weight.device.type != "cpu" or weight.dtype != torch.float32:
        return False
    if weight.numel() * weight.element_size() < min_bytes:
        return False
    if type(layer) is nn.Conv2d:
        return layer.padding_mode == "zeros" and not isinstance(layer.padding, str)
    return type(layer) is ConvLinear


class packed_weights:  # noqa: N801 (a context manager used like a function)
    """Inside this context the large fp32 convolution and ConvLinear weights below `modules` (at least
    `min_bytes` each) are held in oneDNN's blocked layout instead of torch's, and the layers read them
    as they are: their plain copies are released meanwhile, so memory does not grow. Outside, the
    weights are back, bit for bit (a reorder is a permutation). Inference only: the layers refuse
    autograd, other dtypes and other devices while packed.

    Why: a convolution with plain weights reorders them on every call. On the UNet's 8x8 and 16x16
    maps the 1280-channel layers are all weight and no pixels, so that reorder is most of their time
    (measured: 3x3 1280 -> 1280 at 8x8, 28 ms plain, 6.4 ms packed). Packing every large layer and
    restoring it afterwards costs about one step's time, hence `PACK_MIN_STEPS` in the pipelines.

    Weights that are pages of a memory-mapped model file (a model folder's safetensors) are not
    copies this process owns: releasing the tensor frees nothing while the rest of the file is in use.
    Their pages are handed back to the page cache instead (`stablesr.weights.pages`), and on exit the
    weight is the file's view again (read back on demand, the file's own bytes). Measured on full-size
    SD 2.1 weights: 7.0 GB held while packed before this, 4.6 GB after (the packed copies replace the
    mapped pages instead of adding to them).
    """

    def __init__(self, modules, min_bytes: int | None = None) -> None:
        self.modules = list(modules)
        self.min_bytes = PACK_MIN_BYTES if min_bytes is None else min_bytes
        self.layers: list[tuple[nn.Module, type, torch.Size, torch.Tensor | None]] = []
        self.dropped = 0  # bytes of mapped weight pages handed back while packed

    def __enter__(self) -> packed_weights:
        from stablesr.weights.pages import MappedPages, clean_mappings

        try:
            layers = [layer for module in self.modules for layer in module.modules()
                      if _packable(layer, self.min_bytes)]
            mappings = clean_mappings() if layers else []
            for layer in layers:  # each mapped original is handed back as soon as its packed copy exists
                self._pack_layer(layer, mappings)
                if self.layers[-1][-1] is not None:
                    MappedPages([self.layers[-1][-1]], mappings).drop()
            # Once more over all of them: reading one layer maps its neighbours' cached pages in passing
            self.dropped = MappedPages([original for *_, original in self.layers if original is not None],
                                       mappings).drop()
        except BaseException:
            self.__exit__(None, None, None)
            raise
        return self

    def _pack_layer(self, layer: nn.Module, mappings) -> None:
        weight = layer.weight
        address = weight.data_ptr()
        original = weight.data if any(mapping.holds(address) for mapping in mappings) else None
        if type(layer) is nn.Conv2d:
            packed = _pack(weight.detach(), layer, [1, weight.shape[1], 16, 16])
            packed_class = PackedConv2d
        else:
            packed = _pack(weight.detach()[:, :, None, None], PackedConvLinear, [1, weight.shape[1], 256, 1])
            packed_class = PackedConvLinear
        self.layers.append((layer, type(layer), weight.shape, original))
        layer._packed_weight = packed
        layer.__class__ = packed_class
        weight.data = torch.empty(0, dtype=weight.dtype)  # the plain copy is released while packed

    def __exit__(self, *exc) -> None:
        while self.layers:
            layer, plain_class, shape, original = self.layers.pop()
            # A mapped weight is its file's view again; an owned one is unpacked (a reorder is a permutation).
            layer.weight.data = original if original is not None else layer._packed_weight.to_dense().reshape(shape)
            del layer._packed_weight
            layer.__class__ = plain_class
