"""The math against a reference written here from the spec (algorithm.md §2), and the invariants of §6."""

import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from scfg_ext import gaussian_kernel, gaussian_smooth, guidance_rate, plain_cfg, refine_cross, semantic_masks
from scfg_ext.masks import region_ratios

# ---------------------------------------------------------------- reference (numpy, loops, from the spec)

K1 = np.array([math.exp(-(((x - 1) / 1.0) ** 2)) for x in range(3)])
K1 = K1 / K1.sum()
K2 = np.outer(K1, K1)


def ref_smooth(m):  # (h, w): reflect-pad 1, 3x3 kernel
    p = np.pad(m, 1, mode="reflect")
    h, w = m.shape
    return np.array([[(p[i:i + 3, j:j + 3] * K2).sum() for j in range(w)] for i in range(h)])


def ref_bilinear(m, oh, ow):  # align_corners=False
    h, w = m.shape
    out = np.zeros((oh, ow))
    for i in range(oh):
        y = max((i + 0.5) * h / oh - 0.5, 0)
        y0 = min(int(y), h - 1)
        y1 = min(y0 + 1, h - 1)
        fy = y - y0
        for j in range(ow):
            x = max((j + 0.5) * w / ow - 0.5, 0)
            x0 = min(int(x), w - 1)
            x1 = min(x0 + 1, w - 1)
            fx = x - x0
            out[i, j] = ((1 - fy) * ((1 - fx) * m[y0, x0] + fx * m[y0, x1])
                         + fy * ((1 - fx) * m[y1, x0] + fx * m[y1, x1]))
    return out


def ref_nearest(m, oh, ow):
    h, w = m.shape
    return np.array([[m[(i * h) // oh, (j * w) // ow] for j in range(ow)] for i in range(oh)])


def ref_masks(layers, latent, bg=(0,), refine="official"):
    """One image: layers of (S (N,N), C (N,T), (h,w)) as float64 numpy."""
    H, W = latent
    gh, gw = math.ceil(H / 4), math.ceil(W / 4)
    T = layers[0][1].shape[1]
    tok = np.zeros((T, gh, gw))
    fg = np.zeros((2, gh, gw))
    for S, C, (h, w) in layers:
        if refine == "official":
            Cr = ((S + 3 * S @ S) / 4) @ C  # the official (S + 3 S^2)/4, forming S^2 as the code does
        elif refine == "paper":
            Cr = sum(np.linalg.matrix_power(S, q) for q in range(1, 5)) / 4 @ C
        else:
            Cr = C
        maps = []
        for t in range(T):
            m = Cr[:, t].reshape(h, w)
            if (h, w) != (gh, gw):
                m = ref_bilinear(m, gh, gw)
            maps.append(ref_smooth(m))
        maps = np.stack(maps)
        tok += maps / (maps.mean(axis=(1, 2), keepdims=True) + 1e-8)
        bgm = np.zeros(T, bool)
        bgm[list(bg)] = True
        pair = np.stack([maps[bgm].sum(0), maps[~bgm].sum(0)])
        fg += pair / pair.mean(axis=(1, 2), keepdims=True)
    tok /= len(layers)
    fg /= len(layers)
    owner = tok.argmax(0)
    regions = np.stack([ref_nearest((owner == t).astype(float), H, W) for t in range(T)])
    fore = ref_nearest((fg[1] > fg[0]).astype(float), H, W)[None]
    return regions, fore


def ref_rate(delta, regions, fore, gamma, lo=0.8, hi=3.0, cap=15.0):
    n = np.sqrt((delta ** 2).sum(0))
    F = fore[0]
    if F.sum() == 0:
        return np.ones((1,) + n.shape)
    n_fg = (n * F).sum() / (F.sum() + 1e-8)
    rate = np.zeros_like(n)
    for k in range(regions.shape[0]):
        Mk = regions[k]
        if Mk.sum() == 0:
            continue
        n_k = (n * Mk).sum() / (Mk.sum() + 1e-8)
        rate += n_fg / (n_k + 1e-8) * Mk
    rate = np.minimum(np.clip(rate, lo, hi), cap / gamma)
    return ref_smooth(rate)[None]


def random_stochastic(b, n, k, sharp=3.0, gen=None):
    return torch.softmax(torch.randn(b, n, k, generator=gen, dtype=torch.float64) * sharp, -1)


def random_layers(b, latent, tokens, gen, n4=3, n8=1):
    g4 = (math.ceil(latent[0] / 4), math.ceil(latent[1] / 4))
    g8 = (math.ceil(g4[0] / 2), math.ceil(g4[1] / 2))
    layers = []
    for hw, count in ((g4, n4), (g8, n8)):
        n = hw[0] * hw[1]
        for _ in range(count):
            self_attn = random_stochastic(b, n, n, 2.0, gen).float()
            layers.append((self_attn, random_stochastic(b, n, tokens, 3.0, gen).float(), hw))
    return layers


# ---------------------------------------------------------------- reference comparisons


@pytest.mark.parametrize("latent,refine", [((64, 64), "official"), ((40, 56), "official"), ((30, 18), "paper"),
                                           ((64, 64), "none")])
def test_semantic_masks_match_reference(latent, refine):
    gen = torch.Generator().manual_seed(7)
    layers = random_layers(2, latent, 12, gen)
    regions, fore = semantic_masks(layers, latent, background_tokens=(0,), refine=refine)
    assert regions.shape == (2, 12, *latent) and fore.shape == (2, 1, *latent)
    for b in range(2):
        ref_r, ref_f = ref_masks([(s[b].double().numpy(), c[b].double().numpy(), hw) for s, c, hw in layers],
                                 latent, refine=refine)
        # argmax decisions: allow a handful of cells where float32 vs float64 flips a near-tie
        assert (regions[b].numpy() != ref_r).any(0).mean() < 0.01
        assert (fore[b].numpy() != ref_f).mean() < 0.01


@pytest.mark.parametrize("latent", [(64, 64), (40, 56)])
def test_guidance_rate_matches_reference(latent):
    gen = torch.Generator().manual_seed(3)
    regions, fore = semantic_masks(random_layers(2, latent, 12, gen), latent)
    delta = torch.randn(2, 4, *latent, generator=gen) * torch.rand(2, 1, *latent, generator=gen) * 3
    for gamma in (3.0, 7.5, 20.0):
        rate = guidance_rate(delta, regions, fore, gamma)
        for b in range(2):
            ref = ref_rate(delta[b].double().numpy(), regions[b].double().numpy(), fore[b].double().numpy(), gamma)
            np.testing.assert_allclose(rate[b].numpy(), ref, rtol=1e-5, atol=1e-5)


def test_kernel_and_smoothing():
    k = gaussian_kernel()
    assert torch.allclose(k.sum(), torch.tensor(1.0))
    assert torch.allclose(k[1], torch.tensor([0.1221, 0.3319, 0.1221]), atol=1e-4)
    assert torch.allclose(k[0, 0], torch.tensor(0.0449), atol=1e-4)
    const = torch.full((1, 3, 9, 7), 2.5)
    assert torch.allclose(gaussian_smooth(const), const)


def test_refinement_stays_stochastic_and_matches_powers():
    gen = torch.Generator().manual_seed(0)
    S = random_stochastic(2, 16, 16, 2.0, gen)
    C = random_stochastic(2, 16, 5, 2.0, gen)
    for mode in ("official", "paper", "none"):
        assert torch.allclose(refine_cross(S, C, mode).sum(-1), torch.ones(2, 16, dtype=torch.float64))
    assert torch.allclose(refine_cross(S, C, "official"), ((S + 3 * S @ S) / 4) @ C)
    powers = sum(torch.linalg.matrix_power(S, q) for q in range(1, 5)) / 4
    assert torch.allclose(refine_cross(S, C, "paper"), powers @ C)


# ---------------------------------------------------------------- invariants (algorithm.md §6)

shapes = st.tuples(st.integers(4, 24), st.integers(4, 24))


def one_region(h, w, tokens=6, k=2):
    r = torch.zeros(1, tokens, h, w)
    r[:, k] = 1
    return r


@settings(max_examples=40, deadline=None)
@given(hw=shapes, gamma=st.floats(1.0, 15.0), seed=st.integers(0, 2**16))
def test_single_region_full_foreground_is_plain_cfg(hw, gamma, seed):
    gen = torch.Generator().manual_seed(seed)
    delta = torch.randn(1, 4, *hw, generator=gen)
    rate = guidance_rate(delta, one_region(*hw), torch.ones(1, 1, *hw), gamma)
    assert torch.allclose(rate, torch.ones_like(rate), atol=1e-6)
    uncond = torch.randn(1, 4, *hw, generator=gen)
    cond = uncond + delta
    plain = plain_cfg(uncond, [[(cond[0], 1.0)]], gamma)
    assert torch.allclose(uncond + gamma * rate * delta, plain, rtol=1e-5, atol=1e-5)


def random_partition(gen, b, t, h, w):
    owner = torch.randint(0, t, (b, h, w), generator=gen)
    return torch.nn.functional.one_hot(owner, t).permute(0, 3, 1, 2).float()


@settings(max_examples=40, deadline=None)
@given(hw=shapes, seed=st.integers(0, 2**16))
def test_region_equalisation_without_clamps(hw, seed):
    gen = torch.Generator().manual_seed(seed)
    regions = random_partition(gen, 1, 5, *hw)
    fg = (torch.rand(1, 1, *hw, generator=gen) > 0.4).float()
    delta = torch.randn(1, 4, *hw, generator=gen) * torch.rand(1, 1, *hw, generator=gen)
    ratio, _ = region_ratios(delta, regions, fg)
    norm = delta.norm(dim=1)[0]
    n_fg = (norm * fg[0, 0]).sum() / fg.sum()
    if fg.sum() == 0:
        return
    for k in range(5):
        m = regions[0, k].bool()
        if m.any():
            assert torch.allclose((ratio[0, k] * norm[m]).mean(), n_fg, rtol=1e-4)
    # a region identical to the foreground gets ratio 1
    regions2 = torch.cat([fg, 1 - fg], 1)
    assert torch.allclose(region_ratios(delta, regions2, fg)[0][0, 0], torch.tensor(1.0), atol=1e-5)


@settings(max_examples=40, deadline=None)
@given(hw=shapes, seed=st.integers(0, 2**16), c=st.sampled_from([1e-3, 0.5, 7.0, 1e3, -2.0]))
def test_scale_invariance(hw, seed, c):
    gen = torch.Generator().manual_seed(seed)
    regions = random_partition(gen, 2, 4, *hw)
    fg = (torch.rand(2, 1, *hw, generator=gen) > 0.5).float()
    delta = torch.randn(2, 4, *hw, generator=gen, dtype=torch.float64) + 0.1
    a = guidance_rate(delta, regions, fg, 7.5)
    b = guidance_rate(c * delta, regions, fg, 7.5)
    assert torch.allclose(a, b, rtol=1e-4, atol=1e-4)


@settings(max_examples=30, deadline=None)
@given(h=st.integers(8, 40), w=st.integers(8, 40), seed=st.integers(0, 2**16), tokens=st.integers(2, 20))
def test_partition_and_binary_masks(h, w, seed, tokens):
    gen = torch.Generator().manual_seed(seed)
    regions, fore = semantic_masks(random_layers(2, (h, w), tokens, gen, n4=2, n8=1), (h, w))
    assert torch.equal(regions.sum(1), torch.ones(2, h, w))
    assert set(regions.unique().tolist()) <= {0.0, 1.0}
    assert set(fore.unique().tolist()) <= {0.0, 1.0}


@settings(max_examples=40, deadline=None)
@given(hw=shapes, seed=st.integers(0, 2**16), gamma=st.floats(1.0, 40.0), lo=st.floats(0.0, 1.5),
       span=st.floats(0.0, 4.0), cap=st.floats(1.0, 50.0))
def test_bounds(hw, seed, gamma, lo, span, cap):
    gen = torch.Generator().manual_seed(seed)
    regions = random_partition(gen, 2, 4, *hw)
    fg = (torch.rand(2, 1, *hw, generator=gen) > 0.5).float()
    delta = torch.randn(2, 4, *hw, generator=gen) * torch.rand(2, 1, *hw, generator=gen) * 10
    hi = lo + span
    rate = guidance_rate(delta, regions, fg, gamma, min_rate=lo, max_rate=hi, max_scale=cap)
    assert torch.isfinite(rate).all()
    for b in range(2):
        if fg[b].sum() == 0:
            assert torch.equal(rate[b], torch.ones_like(rate[b]))
            continue
        assert rate[b].min() >= min(lo, cap / gamma) - 1e-5
        assert rate[b].max() <= min(hi, cap / gamma) + 1e-5


def test_finite_for_degenerate_inputs():
    h, w = 12, 10
    gen = torch.Generator().manual_seed(0)
    regions = random_partition(gen, 1, 6, h, w)
    regions[:, 5] = 0  # empty region
    regions[:, 0] += 1 - regions.sum(1)
    fg = torch.ones(1, 1, h, w)
    near_fp16_max = ((torch.rand(1, 4, h, w) * 2 - 1) * 6e4).half()
    for delta in (torch.zeros(1, 4, h, w), near_fp16_max, torch.randn(1, 4, h, w).half()):
        rate = guidance_rate(delta, regions.to(delta.dtype), fg.to(delta.dtype), 7.5)
        assert rate.dtype == torch.float32 and torch.isfinite(rate).all()
    # empty foreground: plain CFG (rate 1), not the official 0.8
    assert torch.equal(guidance_rate(torch.randn(1, 4, h, w), regions, torch.zeros(1, 1, h, w), 7.5),
                       torch.ones(1, 1, h, w))
    # masks from all-uniform maps (every token tied) stay a partition and finite
    n = 9
    flat = [(torch.full((1, n, n), 1 / n), torch.full((1, n, 4), 0.25), (3, 3))]
    r, f = semantic_masks(flat, (12, 12))
    assert torch.equal(r.sum(1), torch.ones(1, 12, 12)) and torch.isfinite(f).all()


def test_gamma_above_cap_is_cfg_at_max_scale():
    hw = (8, 8)
    rate = guidance_rate(torch.randn(1, 4, *hw), one_region(*hw), torch.ones(1, 1, *hw), 20.0)
    assert torch.allclose(rate, torch.full_like(rate, 15 / 20))


@settings(max_examples=15, deadline=None)
@given(seed=st.integers(0, 2**16), extra=st.integers(1, 3))
def test_batch_independence(seed, extra):
    gen = torch.Generator().manual_seed(seed)
    latent = (20, 28)
    layers = random_layers(1 + extra, latent, 8, gen)
    regions, fore = semantic_masks(layers, latent)
    alone_r, alone_f = semantic_masks([(s[:1], c[:1], hw) for s, c, hw in layers], latent)
    # batched products need not round like unbatched ones (BLAS kernels may block the batch differently), which
    # can flip a near-tied cell: the masks agree up to a few such cells, never wholesale
    assert (regions[:1] != alone_r).any(1).float().mean() <= 0.01
    assert (fore[:1] != alone_f).float().mean() <= 0.01
    delta = torch.randn(1 + extra, 4, *latent, generator=gen)
    rate = guidance_rate(delta, regions, fore, 7.5)
    assert torch.allclose(rate[:1], guidance_rate(delta[:1], regions[:1], fore[:1], 7.5), atol=1e-6)


def test_package_needs_nothing_but_torch():
    """``import scfg_ext`` (the math, capture, engine, settings) with the WebUI, gradio, ldm and k-diffusion
    all unavailable."""
    import subprocess
    import sys

    code = ("import sys\n"
            "for name in ('gradio', 'ldm', 'k_diffusion', 'modules', 'fastapi', 'PIL', 'einops', 'scipy'):\n"
            "    sys.modules[name] = None\n"
            "import scfg_ext\n"
            "assert callable(scfg_ext.semantic_masks) and callable(scfg_ext.guidance_rate)\n")
    from webui_harness import ROOT

    result = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr


# ---------------------------------------------------------------- batched accumulation (what the capture uses)


@pytest.mark.parametrize("tokens,chunks", [(12, (0,)), (154, (0, 77))])
def test_add_layers_equals_one_add_tokens_per_layer(tokens, chunks):
    from scfg_ext.masks import MaskAccumulator, layer_maps, pair_weights

    gen = torch.Generator().manual_seed(11)
    latent = (24, 40)
    layers = random_layers(3, latent, tokens, gen, n4=4, n8=0)
    grid = (6, 10)
    maps = torch.stack([layer_maps(s, c, hw, grid, "official") for s, c, hw in layers])  # (L, B, T, gh, gw)
    pair_w = pair_weights(tokens, chunks)
    one, batched, pre_reduced = MaskAccumulator(), MaskAccumulator(), MaskAccumulator()
    for m in maps:
        one.add_tokens(m, pair_w)
    batched.add_layers(maps[:2], pair_w)
    batched.add_layers(maps[2:], pair_w)
    # the capture's layout: the [background, rest] reduction already appended as two channels
    both = torch.cat([maps, torch.stack([layer_map_pair(s, c, hw, grid, pair_w) for s, c, hw in layers])], 2)
    pre_reduced.add_layers(both)
    for acc in (batched, pre_reduced):
        assert acc.layers == one.layers == len(layers)
        torch.testing.assert_close(acc.tokens(), one.tokens(), rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(acc.pair(), one.pair(), rtol=1e-5, atol=1e-6)


def layer_map_pair(s, c, hw, grid, pair_w):
    from scfg_ext.masks import layer_maps, reduce_to_pair

    return layer_maps(s, reduce_to_pair(c, pair_w), hw, grid, "official")


@pytest.mark.parametrize("hw,grid", [((8, 8), (16, 16)), ((3, 5), (6, 10)), ((4, 3), (7, 5))])
def test_resize_matrix_is_the_bilinear_resize(hw, grid):
    from scfg_ext.masks import resize_matrix

    m = torch.rand(5, 7, *hw)
    ref = torch.nn.functional.interpolate(m, size=grid, mode="bilinear", align_corners=False)
    got = (m.reshape(5, 7, -1) @ resize_matrix(hw, grid)).view(5, 7, *grid)
    torch.testing.assert_close(got, ref)


def test_a_one_frame_5d_latent_gets_the_rate_of_its_4d_latent():
    """Forge Neo's Anima (and Wan, Qwen-Image) latents are (B, C, frames, H, W)."""
    gen = torch.Generator().manual_seed(3)
    delta = torch.randn(2, 16, 12, 20, generator=gen)
    regions = torch.nn.functional.one_hot(torch.randint(0, 5, (2, 12, 20), generator=gen), 5).permute(0, 3, 1, 2)
    foreground = (torch.rand(2, 1, 12, 20, generator=gen) > 0.3).float()
    flat = guidance_rate(delta, regions.float(), foreground, 7.0)
    assert torch.equal(guidance_rate(delta[:, :, None], regions.float(), foreground, 7.0), flat)
