"""The shared window grid, weights and blending canvas."""

import torch

from stablesr.tiling.canvas import BlendCanvas
from stablesr.tiling.grid import Window, axis_starts, window_grid
from stablesr.tiling.weights import gaussian_weights, linear_fade, raised_cosine_ramp


def test_one_window_rule_two_orders():
    assert axis_starts(40, 16, 4) == [0, 12, 24] and axis_starts(41, 16, 4) == [0, 12, 24, 25]
    rows_first = window_grid(40, 72, tile_size=32, tile_overlap=16)
    columns_first = window_grid(40, 72, tile_size=32, tile_overlap=16, order="columns_outer")
    assert rows_first[:2] == [Window(0, 32, 0, 32), Window(0, 32, 16, 48)]
    assert columns_first[:2] == [Window(0, 32, 0, 32), Window(8, 40, 0, 32)]
    assert sorted(rows_first, key=lambda w: (w.y0, w.x0)) == sorted(columns_first, key=lambda w: (w.y0, w.x0))
    assert Window(1, 2, 3, 5).scaled(4) == Window(4, 8, 12, 20)


def test_canvas_returns_a_constant_exactly_under_every_weight():
    height, width, canvas_weights = 40, 72, {
        "gaussian": lambda w: gaussian_weights(w.height, w.width),
        "raised cosine": lambda w: torch.outer(raised_cosine_ramp(w.height, 8, fade_in=w.y0 > 0, fade_out=w.y1 < 40),
                                               raised_cosine_ramp(w.width, 8, fade_in=w.x0 > 0, fade_out=w.x1 < 72)),
        "linear fade": lambda w: torch.outer(linear_fade(w.height, 8, fade_in=w.y0 > 0, fade_out=w.y1 < 40),
                                             linear_fade(w.width, 8, fade_in=w.x0 > 0, fade_out=w.x1 < 72)),
    }
    for name, weight_of in canvas_weights.items():
        canvas = BlendCanvas((1, 2, height, width), dtype=torch.float64, device=torch.device("cpu"))
        for window in window_grid(height, width, tile_size=32, tile_overlap=16):
            canvas.add(window, torch.full((1, 2, window.height, window.width), 0.75, dtype=torch.float64),
                       weight_of(window))
        assert (canvas.result() - 0.75).abs().max().item() < 1e-15, name


def test_streaming_canvas_equals_the_whole_canvas_bitwise_and_quantises_like_tensor_to_pil():
    import numpy as np
    import pytest

    from stablesr.image_processor import tensor_to_pil
    from stablesr.tiling.canvas import StreamingCanvas, quantized_sink, tensor_sink

    generator = torch.Generator().manual_seed(0)
    windows = window_grid(45, 38, tile_size=16, tile_overlap=6)  # rows outer: y0 never decreases
    weights = gaussian_weights(16, 16).float()
    outs = [torch.rand(1, 3, 16, 16, generator=generator) for _ in windows]
    whole = BlendCanvas((1, 3, 45, 38), dtype=torch.float32, device=torch.device("cpu"))
    streamed = torch.full((1, 3, 45, 38), float("nan"))
    picture = np.zeros((45, 38, 3), dtype=np.uint8)
    canvases = [StreamingCanvas((1, 3, 45, 38), band_rows=16, sink=sink, dtype=torch.float32,
                                device=torch.device("cpu"))
                for sink in (tensor_sink(streamed), quantized_sink(picture))]
    for window, out in zip(windows, outs):
        whole.add(window, out, weights)
        for canvas in canvases:
            canvas.add(window, out, weights)
    for canvas in canvases:
        canvas.finish()
    assert torch.equal(streamed, whole.result())
    assert np.array_equal(picture, np.asarray(tensor_to_pil(whole.result())))
    assert canvases[0].total.shape == (1, 3, 16, 38)  # one band of rows, not the image
    with pytest.raises(ValueError, match="row order"):
        canvases[0].add(windows[0], outs[0], weights)
    small = StreamingCanvas((1, 3, 45, 38), band_rows=8, sink=tensor_sink(streamed), dtype=torch.float32,
                            device=torch.device("cpu"))
    with pytest.raises(ValueError, match="exceed the band"):
        small.add(windows[0], outs[0], weights)
