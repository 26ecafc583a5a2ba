"""Padding a latent up to a multiple of a UNet's downsampling, and cropping back."""

import torch

from mambacontrol.nn.padding import crop_to, pad_to_multiple, padding_for


def test_padding_reaches_the_multiple_and_crops_back_exactly():
    x = torch.randn(2, 3, 15, 18, 15)
    assert padding_for((15, 18, 15), 4) == (1, 2, 1)
    padded = pad_to_multiple(x, 4)
    assert padded.shape == (2, 3, 16, 20, 16)
    assert torch.equal(crop_to(padded, (15, 18, 15)), x)
    # the border is replicated: the added slab equals the last one
    assert torch.equal(padded[:, :, 15, :18, :15], x[:, :, 14])
    assert torch.equal(padded[:, :, :15, 19, :15], x[:, :, :, 17])
    assert torch.equal(padded[:, :, :15, :18, 15], x[..., 14])


def test_a_grid_already_a_multiple_is_left_alone():
    x = torch.randn(1, 2, 8, 12, 8)
    assert pad_to_multiple(x, 4) is x
