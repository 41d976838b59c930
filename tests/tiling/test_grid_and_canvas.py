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
