"""Boxes of masks and the one centred square padding (numpy H x W x C and torch C x H x W)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from workers.engine.blocks.geometry import (
    SquareGeometry,
    freesolo_box_xyxy,
    pad_square,
    pad_square_chw,
    tight_box_xyxy,
)
from workers.engine.core.errors import BadInputError


def test_pad_square_centres_with_the_smaller_half_first() -> None:
    image = np.arange(2 * 5 * 3, dtype=np.uint8).reshape(2, 5, 3)
    square, geometry = pad_square(image, fill=7)
    assert square.shape == (5, 5, 3) and geometry == SquareGeometry(2, 5)
    assert (geometry.top, geometry.left) == (1, 0)
    assert (square[1:3] == image).all() and (square[0] == 7).all() and (square[3:] == 7).all()
    tall, where = pad_square(np.ones((5, 2, 1), dtype=np.float32))
    assert tall.shape == (5, 5, 1) and (where.top, where.left) == (0, 1) and tall[:, 1:3].all()
    with pytest.raises(BadInputError, match="H x W x C"):
        pad_square(np.zeros((3, 3)))


def test_pad_square_chw_matches_the_numpy_layout() -> None:
    image = torch.arange(3 * 2 * 5, dtype=torch.float32).reshape(3, 2, 5)
    padded = pad_square_chw(image, torch.tensor([1.0, 2.0, 3.0]).view(3, 1, 1))
    reference, _ = pad_square(image.permute(1, 2, 0).numpy(), fill=0)
    assert padded.shape == (3, 5, 5) and torch.equal(padded[:, 1:3], image)
    assert np.array_equal(padded.permute(1, 2, 0).numpy()[1:3], reference[1:3])
    assert (padded[0, 0] == 1).all() and (padded[2, 4] == 3).all()
    square = torch.ones(3, 4, 4)
    assert pad_square_chw(square, torch.zeros(3, 1, 1)) is square


def test_boxes_of_masks() -> None:
    mask = np.zeros((10, 12), dtype=bool)
    mask[2:5, 3:9] = True
    assert tight_box_xyxy(mask) == (3, 2, 9, 5)
    assert freesolo_box_xyxy(mask) == (
        2,
        1,
        8,
        4,
    )  # centre of mass -/+ half the count, truncated: the code's box
    assert tight_box_xyxy(np.zeros((4, 6), dtype=bool)) == (0, 0, 6, 4)
    assert freesolo_box_xyxy(torch.zeros(4, 6, dtype=torch.bool)) == (0, 0, 6, 4)
