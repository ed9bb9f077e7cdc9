"""Edges of masks.py that a mutation run with tests/test_masks.py found unchecked (issue 25): a 2-cell side's
reflect padding, the smoothed-mean weights (the adjoint of the smoothing), the average over layers, a tie between
background and the rest, half-precision maps, a self-attention of the wrong size, a region whose guidance is
exactly zero, empty regions' ratio; and a disabled ``Settings`` being active nowhere."""

from __future__ import annotations

import pytest
import torch

from scfg_ext import masks as M
from scfg_ext.settings import Settings

W0, W1 = M.GAUSSIAN_1D[0], M.GAUSSIAN_1D[1]


def test_a_two_cell_side_is_reflected():
    """Reflect padding of [1, 0] is [0, 1, 0, 1]: the 3 taps give [w1, 2 w0] (replicate would give
    [w0 + w1, w0])."""
    row = torch.tensor([[[[1.0, 0.0]] * 3]])  # (1, 1, 3, 2): constant down each column
    assert torch.allclose(M.gaussian_smooth(row)[0, 0, 1], torch.tensor([W1, 2 * W0]))


@pytest.mark.parametrize("grid", [(1, 4), (2, 3), (5, 4), (6, 6)])
def test_smoothed_mean_weights_are_the_smoothings_adjoint(grid):
    m = torch.rand(1, 1, *grid, generator=torch.Generator().manual_seed(grid[0] * 10 + grid[1]))
    w = M._smoothed_mean_weights(grid, torch.device("cpu"))
    assert torch.allclose(M.gaussian_smooth(m).mean(), (m.flatten() * w).sum(), rtol=1e-6, atol=0)


def test_tokens_and_pair_are_averages_over_layers():
    acc, maps = M.MaskAccumulator(), torch.rand(3, 1, 4, 4, 4, generator=torch.Generator().manual_seed(1))
    acc.add_layers(maps)
    one = M.MaskAccumulator()
    one.add_layers(maps[:1])
    alone = [M.MaskAccumulator() for _ in range(3)]
    for a, layer in zip(alone, maps, strict=True):
        a.add_layers(layer[None])
    assert torch.allclose(acc.tokens(), sum(a.tokens() for a in alone) / 3, rtol=1e-5)
    assert torch.allclose(acc.pair(), sum(a.pair() for a in alone) / 3, rtol=1e-5)
    assert acc.layers == 3 and not torch.allclose(acc.tokens(), 3 * one.tokens())


def test_a_tie_with_the_background_is_background():
    pair = torch.tensor([[[[1.0, 2.0]], [[1.0, 1.0]]]])  # (1, 2, 1, 2): background, rest
    tokens = torch.ones(1, 3, 1, 2)

    def foreground(pair):  # the last channel of the stacked masks
        return M.stacked_masks(tokens, pair, (1, 2))[:, -1].flatten().tolist()

    assert foreground(pair) == [0.0, 0.0]
    assert foreground(pair.flip(1)) == [0.0, 1.0]


def test_half_precision_maps_are_refined_in_float32():
    g = torch.Generator().manual_seed(2)
    self_attn = torch.softmax(torch.randn(1, 16, 16, generator=g), -1)
    cross = torch.softmax(torch.randn(1, 16, 5, generator=g) * 4, -1)
    full = M.layer_maps(self_attn, cross, (4, 4), (4, 4), "official")
    half = M.layer_maps(self_attn.half(), cross.half(), (4, 4), (4, 4), "official")
    assert half.dtype == torch.float32
    assert (half - full).abs().max() < 2e-3
    assert torch.equal(half, M.layer_maps(self_attn.half().float(), cross.half().float(), (4, 4), (4, 4), "official"))


def test_a_self_attention_of_another_size_is_refused():
    cross = torch.full((1, 16, 3), 1 / 3)
    with pytest.raises(ValueError, match="do not fit a 4x4 layer"):
        M.layer_maps(torch.full((1, 16, 9), 1 / 9), cross, (4, 4), (4, 4), "official")


def test_a_region_with_no_guidance_gets_the_highest_rate_and_empty_regions_no_ratio():
    """Region 1 (left half) has cond == uncond: its mean norm is 0, so bringing it to the foreground's needs the
    largest rate (the clamp's max_rate); token 2 owns no cell: its ratio is 0."""
    regions = torch.zeros(1, 3, 8, 8)
    regions[:, 0, :, 4:] = 1
    regions[:, 1, :, :4] = 1
    delta = torch.ones(1, 4, 8, 8)
    delta[..., :4] = 0
    foreground = torch.ones(1, 1, 8, 8)
    ratio, _ = M.region_ratios(delta, regions, foreground)
    assert ratio[0, 2] == 0 and ratio[0, 1] > 1e6
    rate = M.guidance_rate(delta, regions, foreground, 5.0, min_rate=0.8, max_rate=2.5, max_scale=None)
    assert torch.allclose(rate[0, 0, :, :2], torch.tensor(2.5))


def test_a_disabled_setting_is_active_nowhere():
    assert not Settings(enabled=False).active_at(0.5) and Settings(enabled=True).active_at(0.5)


def test_a_zero_cfg_scale_has_no_cap():
    """``max_scale / cfg_scale`` is not taken at CFG 0 (an API may send it): the rate is still computed."""
    regions = torch.zeros(1, 2, 4, 4)
    regions[:, 1] = 1
    rate = M.guidance_rate(torch.ones(1, 4, 4, 4), regions, torch.ones(1, 1, 4, 4), 0.0, max_scale=15.0)
    assert torch.equal(rate, torch.ones(1, 1, 4, 4))
