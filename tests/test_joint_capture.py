"""Attention capture on the miniature joint-attention transformer (NextDiT's structure, Lumina 2 / Z-Image,
``scfg_ext.miniature.nextdit``): one attention over ``[caption | image]`` per main layer; its image-query part
against the image keys is the self-attention map, against the caption keys the cross-attention map, each
normalised over its own keys."""

import pytest
import torch
from conftest import hook_count

from scfg_ext import AttentionCapture, Cond, Uncond, find_attention_layers
from scfg_ext.miniature import nextdit

LATENT = (12, 20)  # a 6x10 token grid


@pytest.fixture(scope="module")
def small_nextdit():
    torch.manual_seed(0)
    net = nextdit.MiniatureNextDiT(dim=32, depth=3, heads=4, context_dim=16, axes=(2, 2, 4))
    return net.eval().requires_grad_(False)


def inputs(b=2, tokens=10, seed=0):
    gen = torch.Generator().manual_seed(seed)
    return (torch.randn(b, 4, *LATENT, generator=gen), torch.full((b,), 500),
            torch.randn(b, tokens, 16, generator=gen))


def reference_maps(module, x, rope, text):
    """The image queries' softmax over the image keys and over the text keys, from the module's own fused
    projection, norms and rotary embedding, averaged over heads."""
    b, n, _ = x.shape
    q, k, _ = module.qkv(x).view(b, n, 3, module.n_local_heads, module.head_dim).unbind(2)
    q, k = nextdit.apply_rope(module.q_norm(q), rope), nextdit.apply_rope(module.k_norm(k), rope)
    scores = torch.einsum("bihd,bjhd->bhij", q[:, text:], k) * module.head_dim**-0.5
    return scores[..., text:].softmax(-1).mean(1), scores[..., :text].softmax(-1).mean(1)


def test_the_main_layers_are_found_not_the_refiners(small_nextdit):
    layers = find_attention_layers(small_nextdit)
    assert [(layer.name, layer.factor, layer.joint) for layer in layers] == [
        ("layers.0", 2, 1), ("layers.1", 2, 1), ("layers.2", 2, 1)]
    assert all(layer.function is nextdit and layer.attn1 is layer.attn2 for layer in layers)


def test_captured_maps_equal_the_direct_softmax_and_outputs_are_identical(small_nextdit):
    x, t, ctx = inputs()
    seen = {}

    def record(i):
        def hook(module, args):
            seen[i] = (args[0].clone(), args[2])
        return hook

    observed = []
    capture = AttentionCapture(foreground="uncond")
    capture.observer = lambda layer, roles, s, c: observed.append((layer.name, roles, s, c))
    handles = [layer.attention.register_forward_pre_hook(record(i)) for i, layer in enumerate(small_nextdit.layers)]
    plain = small_nextdit(x, t, context=ctx)
    original = nextdit.attention_function
    try:
        with capture.attach(small_nextdit):
            capture.plan_step([Cond(0), Uncond(0)])
            hooked = small_nextdit(x, t, context=ctx)
            regions, foreground = capture.masks()[Cond(0)]
    finally:
        for h in handles:
            h.remove()
    assert torch.equal(plain, hooked)
    assert nextdit.attention_function is original and hook_count(small_nextdit) == 0
    assert [name for name, *_ in observed] == ["layers.0", "layers.1", "layers.2"]
    for i, (_, roles, s, c) in enumerate(observed):
        assert roles == [Cond(0), Uncond(0)]
        want_s, want_c = reference_maps(small_nextdit.layers[i].attention, *seen[i], text=10)
        torch.testing.assert_close(s, want_s)
        torch.testing.assert_close(c, want_c)
        assert s.shape == (2, 60, 60) and c.shape == (2, 60, 10)
    assert regions.shape == (1, 10, *LATENT) and foreground.shape == (1, 1, *LATENT)
    assert capture.background == "start"


def test_the_context_is_read_when_passed_by_position(small_nextdit):
    x, t, ctx = inputs()
    capture = AttentionCapture()
    with capture.attach(small_nextdit):
        capture.plan_step([Cond(0), Uncond(0)])
        small_nextdit(x, t, ctx)
        assert capture.error is None and capture.masks()[Cond(0)][0].shape == (1, 10, *LATENT)


def test_a_tiled_texts_start_copies_are_its_background():
    """Forge tiles a shorter text to the batch's length (``c.repeat``): the first token of every copy is a
    start; an untiled row has one."""
    from scfg_ext.capture import tile_starts

    gen = torch.Generator().manual_seed(0)
    short, other = torch.randn(1, 5, 8, generator=gen), torch.randn(1, 15, 8, generator=gen)
    starts = tile_starts(torch.cat([short.repeat(1, 3, 1), other]))
    assert starts.nonzero().tolist() == [[0, 0], [0, 5], [0, 10], [1, 0]]


def test_the_foreground_of_a_joint_model_uses_each_rows_starts(small_nextdit):
    """Background "start" on a joint model: each row's own start positions, a tiled row's copies included; the
    regions and foreground equal ``semantic_masks`` of the captured maps with those background positions."""
    from scfg_ext import masks as M

    x, t, _ = inputs()
    gen = torch.Generator().manual_seed(3)
    ctx = torch.cat([torch.randn(1, 5, 16, generator=gen).repeat(1, 2, 1), torch.randn(1, 10, 16, generator=gen)])
    observed = []
    capture = AttentionCapture(refine="none")
    capture.observer = lambda layer, roles, s, c: observed.append((s, c))
    with capture.attach(small_nextdit):
        capture.plan_step([Cond(0), Cond(1)])
        small_nextdit(x, t, context=ctx)
        got = capture.masks()
    for row, background in enumerate([[0, 5], [0]]):
        layers = [(s[row: row + 1], c[row: row + 1], (6, 10)) for s, c in observed]
        regions, foreground = M.semantic_masks(layers, LATENT, background_tokens=background, refine="none")
        torch.testing.assert_close(got[Cond(row)][0], regions)
        torch.testing.assert_close(got[Cond(row)][1], foreground)
