"""The one image converter: [0, 1] in and out, same kind out as in."""

import numpy as np
import pytest
import torch
from PIL import Image

from stablesr.errors import StableSRError
from stablesr.image_processor import (
    input_kind,
    pil_to_tensor,
    postprocess_images,
    preprocess_images,
    tensor_to_pil,
    to_model_range,
    to_unit_range,
)


def test_pil_tensor_and_array_inputs_give_the_same_unit_tensors():
    rgb = np.arange(4 * 5 * 3, dtype=np.uint8).reshape(4, 5, 3) * 4
    expected = torch.from_numpy(rgb.astype(np.float32) / 255).permute(2, 0, 1)[None]
    from_pil = preprocess_images(Image.fromarray(rgb))
    from_uint8 = preprocess_images(rgb)
    from_float = preprocess_images(rgb.astype(np.float32) / 255)
    from_tensor = preprocess_images(expected[0])
    for batch in (from_pil, from_uint8, from_float, from_tensor):
        assert len(batch) == 1 and torch.equal(batch[0], expected)
    assert [input_kind(x) for x in (Image.fromarray(rgb), rgb, expected)] == ["pil", "np", "pt"]


def test_outputs_round_trip_exactly_for_8_bit_values():
    rgb = np.random.default_rng(0).integers(0, 256, (6, 7, 3), dtype=np.uint8)
    unit = pil_to_tensor(Image.fromarray(rgb))
    assert np.array_equal(np.asarray(tensor_to_pil(unit)), rgb)
    assert np.array_equal(postprocess_images([unit], "np")[0], unit[0].permute(1, 2, 0).numpy())
    assert torch.equal(postprocess_images([unit, unit], "pt"), torch.cat([unit, unit]))
    assert tensor_to_pil(unit, bit_depth=16).dtype == np.uint16
    assert torch.equal(to_unit_range(to_model_range(torch.tensor([0.0, 0.5, 1.0]))), torch.tensor([0.0, 0.5, 1.0]))


def test_out_of_range_and_wrong_shapes_are_refused():
    with pytest.raises(StableSRError, match=r"in \[0, 1\]"):
        preprocess_images(torch.full((1, 3, 4, 4), -0.5))  # a [-1, 1] tensor would give a darker picture
    with pytest.raises(StableSRError, match="must be"):
        preprocess_images(np.zeros((4, 4, 4), dtype=np.float32))
    with pytest.raises(StableSRError, match="output_type"):
        postprocess_images([torch.zeros(1, 3, 2, 2)], "jpeg")
