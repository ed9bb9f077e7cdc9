"""Attention capture on the miniature joint-attention transformers: NextDiT's structure (Lumina 2 / Z-Image,
``scfg_ext.miniature.nextdit``) and Chroma's MMDiT (``scfg_ext.miniature.mmdit``, Flux's double and single
blocks): one attention over ``[text | image]`` per block; its image-query part against the image keys is the
self-attention map, against the text keys the cross-attention map, each normalised over its own keys."""

import pytest
import torch
from conftest import hook_count

from scfg_ext import AttentionCapture, Cond, Uncond, find_attention_layers
from scfg_ext.miniature import mmdit, nextdit

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


def test_a_tiled_texts_start_and_end_copies_are_its_background():
    """Forge tiles a shorter text to the batch's length (``c.repeat``): the first (last) token of every copy is a
    start (an end); an untiled row has one."""
    from scfg_ext.capture import tile_backgrounds

    gen = torch.Generator().manual_seed(0)
    short, other = torch.randn(1, 5, 8, generator=gen), torch.randn(1, 15, 8, generator=gen)
    context = torch.cat([short.repeat(1, 3, 1), other])
    assert tile_backgrounds(context, "start").nonzero().tolist() == [[0, 0], [0, 5], [0, 10], [1, 0]]
    assert tile_backgrounds(context, "end").nonzero().tolist() == [[0, 4], [0, 9], [0, 14], [1, 14]]


def test_a_padded_texts_end_is_its_last_vector_and_every_copy_of_it():
    """``stack_conds`` pads a batch's shorter context with copies of its last vector (T5's ``</s>``): all of
    them are the end; an equal vector before another one is not. A tiled row's tiles each end so too."""
    from scfg_ext.capture import tile_backgrounds

    gen = torch.Generator().manual_seed(0)
    words, end = torch.randn(1, 4, 8, generator=gen), torch.randn(1, 1, 8, generator=gen)
    padded = torch.cat([end, words, end.repeat(1, 3, 1)], 1)  # an end vector first, then words, </s> x 3
    tile = torch.cat([words[:, :2], end, end], 1)
    context = torch.cat([padded, tile.repeat(1, 2, 1)])
    assert tile_backgrounds(context, "end").nonzero().tolist() == [[0, 5], [0, 6], [0, 7],
                                                                    [1, 2], [1, 3], [1, 6], [1, 7]]
    assert tile_backgrounds(context, "start").nonzero().tolist() == [[0, 0], [1, 0], [1, 4]]


# ------------------------------------------------------------------------------------------------------
# MMDiT (Chroma: Flux's double and single blocks)


@pytest.fixture(scope="module")
def small_mmdit():
    torch.manual_seed(0)
    net = mmdit.MiniatureMMDiT(dim=32, depth=2, depth_single=2, heads=4, context_dim=16, axes=(2, 2, 4))
    return net.eval().requires_grad_(False)


def test_the_double_and_single_blocks_are_found(small_mmdit):
    layers = find_attention_layers(small_mmdit)
    assert [(layer.name, layer.factor, layer.joint, layer.background) for layer in layers] == [
        ("double_blocks.0", 2, 1, "image"), ("double_blocks.1", 2, 1, "image"),
        ("single_blocks.0", 2, 1, "image"), ("single_blocks.1", 2, 1, "image")]
    assert all(layer.function is mmdit and layer.attn1 is layer.attn2 for layer in layers)


def test_mmdit_maps_equal_the_direct_softmax_and_outputs_are_identical(small_mmdit, monkeypatch):
    """The reference takes q, k and the rotary angles where flux.py's ``attention`` gets them (before the
    rotation, outside the function the capture wraps) and rotates them itself."""
    x, t, ctx = inputs()
    plain = small_mmdit(x, t, context=ctx)
    seen = []
    attention = mmdit.attention

    def recording(q, k, v, pe):
        seen.append((q, k, pe))
        return attention(q, k, v, pe)

    monkeypatch.setattr(mmdit, "attention", recording)
    observed = []
    capture = AttentionCapture(foreground="uncond")
    capture.observer = lambda layer, roles, s, c: observed.append((layer.name, roles, s, c))
    original = mmdit.attention_function
    with capture.attach(small_mmdit):
        capture.plan_step([Cond(0), Uncond(0)])
        hooked = small_mmdit(x, t, context=ctx)
        regions, foreground = capture.masks()[Cond(0)]
    assert torch.equal(plain, hooked)
    assert mmdit.attention_function is original and hook_count(small_mmdit) == 0
    assert [name for name, *_ in observed] == ["double_blocks.0", "double_blocks.1", "single_blocks.0",
                                                "single_blocks.1"]
    assert len(seen) == 4
    for (_, roles, s, c), (q, k, pe) in zip(observed, seen, strict=True):
        q, k = (nextdit.apply_rope(u.transpose(1, 2), pe) for u in (q, k))  # (B, L, H, D)
        scores = torch.einsum("bihd,bjhd->bhij", q[:, 10:], k) * q.shape[-1] ** -0.5
        assert roles == [Cond(0), Uncond(0)]
        torch.testing.assert_close(s, scores[..., 10:].softmax(-1).mean(1))
        torch.testing.assert_close(c, scores[..., :10].softmax(-1).mean(1))
    assert regions.shape == (1, 10, *LATENT) and foreground.shape == (1, 1, *LATENT)
    assert capture.background == "image" and foreground.all()


@pytest.mark.parametrize("net, background, backgrounds", [("small_nextdit", "start", [[0, 5], [0]]),
                                                          ("small_mmdit", "end", [[4, 9], [7, 8, 9]])])
def test_the_foreground_of_a_joint_model_uses_each_rows_own_background(net, background, backgrounds, request):
    """A joint model's background: each row's first position ("start", NextDiT's default) or last ("end", with the
    copies of it that pad a row) and, in a tiled row, each copy's; the regions and foreground equal
    ``semantic_masks`` of the captured maps with those background positions."""
    from scfg_ext import masks as M

    net = request.getfixturevalue(net)
    x, t, _ = inputs()
    gen = torch.Generator().manual_seed(3)
    padded = torch.randn(1, 8, 16, generator=gen)
    padded = torch.cat([padded, padded[:, -1:]], 1) if background == "end" else torch.randn(1, 9, 16, generator=gen)
    ctx = torch.cat([torch.randn(1, 5, 16, generator=gen).repeat(1, 2, 1), torch.cat([padded, padded[:, -1:]], 1)])
    observed = []
    capture = AttentionCapture(refine="none", background=background)
    capture.observer = lambda layer, roles, s, c: observed.append((s, c))
    with capture.attach(net):
        capture.plan_step([Cond(0), Cond(1)])
        net(x, t, context=ctx)
        got = capture.masks()
    for row, background in enumerate(backgrounds):
        layers = [(s[row: row + 1], c[row: row + 1], (6, 10)) for s, c in observed]
        regions, foreground = M.semantic_masks(layers, LATENT, background_tokens=background, refine="none")
        torch.testing.assert_close(got[Cond(row)][0], regions)
        torch.testing.assert_close(got[Cond(row)][1], foreground)


# ------------------------------------------------------------------------------------------------------
# Qwen-Image's MMDiT: its attention module passes (B, L, H * D); an edit's reference latents follow the image


@pytest.fixture(scope="module")
def small_qwen():
    torch.manual_seed(0)
    net = mmdit.MiniatureQwenImage(dim=32, depth=2, heads=4, context_dim=16, axes=(2, 2, 4))
    return net.eval().requires_grad_(False)


def test_qwen_image_blocks_are_found(small_qwen):
    layers = find_attention_layers(small_qwen)
    assert [(layer.name, layer.joint, layer.background, layer.image_after_text) for layer in layers] == [
        ("transformer_blocks.0", 1, "image", True), ("transformer_blocks.1", 1, "image", True)]
    assert all(layer.function is mmdit and layer.attn1 is layer.attn2 for layer in layers)


@pytest.mark.parametrize("references", [0, 1])
def test_qwen_image_maps_equal_the_direct_softmax_and_outputs_are_identical(small_qwen, references):
    """5-D latents; the reference is recomputed from the attention module's inputs with its own projections,
    norms and rotation; the reference latents' tokens are neither queries nor keys of the maps."""
    x, t, ctx = inputs()
    x = x[:, :, None]
    refs = [torch.randn(2, 4, 1, 8, 8, generator=torch.Generator().manual_seed(5))] * references
    plain = small_qwen(x, t, context=ctx, ref_latents=refs)
    seen = []

    def record(module, args, kwargs):
        seen.append((module, kwargs["hidden_states"], kwargs["encoder_hidden_states"], kwargs["image_rotary_emb"]))

    handles = [b.attn.register_forward_pre_hook(record, with_kwargs=True) for b in small_qwen.transformer_blocks]
    observed = []
    capture = AttentionCapture(foreground="uncond")
    capture.observer = lambda layer, roles, s, c: observed.append((s, c))
    try:
        with capture.attach(small_qwen):
            capture.plan_step([Cond(0), Uncond(0)])
            hooked = small_qwen(x, t, context=ctx, ref_latents=refs)
            assert capture.error is None
            regions, _ = capture.masks()[Cond(0)]
    finally:
        for h in handles:
            h.remove()
    assert torch.equal(plain, hooked) and hook_count(small_qwen) == 0
    assert len(observed) == len(seen) == 2
    n = 60
    for (s, c), (m, img, txt, pe) in zip(observed, seen, strict=True):
        q = nextdit.apply_rope(torch.cat([m.norm_added_q(m.add_q_proj(txt).unflatten(-1, (4, -1))),
                                          m.norm_q(m.to_q(img).unflatten(-1, (4, -1)))], 1), pe)
        k = nextdit.apply_rope(torch.cat([m.norm_added_k(m.add_k_proj(txt).unflatten(-1, (4, -1))),
                                          m.norm_k(m.to_k(img).unflatten(-1, (4, -1)))], 1), pe)
        scores = torch.einsum("bihd,bjhd->bhij", q[:, 10:10 + n], k) * q.shape[-1] ** -0.5
        torch.testing.assert_close(s, scores[..., 10:10 + n].softmax(-1).mean(1))
        torch.testing.assert_close(c, scores[..., :10].softmax(-1).mean(1))
    assert regions.shape == (1, 10, *LATENT) and capture.background == "image"
