"""Attention capture on the miniature diffusion transformer (Anima's block structure, ``scfg_ext.miniature.dit``):
q and k are taken where the blocks call their module's ``attention_function``, as Forge Neo's DiTs call
``backend.attention.attention_function``."""

import pytest
import torch
from conftest import hook_count

from scfg_ext import AttentionCapture, Cond, ScfgRun, Settings, Uncond, find_attention_layers
from scfg_ext import masks as M
from scfg_ext.capture import _row_backgrounds
from scfg_ext.miniature import dit
from scfg_ext.miniature import model as MM

LATENT = (12, 20)  # non-square, not a multiple of 4: a 6x10 token grid


@pytest.fixture(scope="module")
def small_dit():
    torch.manual_seed(0)
    net = dit.MiniatureDiT(dim=32, depth=3, heads=4, context_dim=16)
    return net.eval().requires_grad_(False)


def inputs(b=2, tokens=10, seed=0, pad_from=None):
    gen = torch.Generator().manual_seed(seed)
    ctx = torch.randn(b, tokens, 16, generator=gen)
    if pad_from is not None:
        for row, start in enumerate(pad_from):
            ctx[row, start:] = 0
    return torch.randn(b, 4, *LATENT, generator=gen), torch.full((b,), 500), ctx


def reference_probs(module, x, context, rope):
    """softmax(q k^T / sqrt(d)) per head from the module's own projections, norms and rotary embedding,
    averaged over heads."""
    context = x if context is None else context
    h, d = module.n_heads, module.head_dim
    q = module.q_norm(module.q_proj(x).unflatten(-1, (h, d)))
    k = module.k_norm(module.k_proj(context).unflatten(-1, (h, d)))
    if module.is_selfattn:
        q, k = dit.rotate(q, rope), dit.rotate(k, rope)
    return (torch.einsum("bihd,bjhd->bhij", q, k) * d**-0.5).softmax(-1).mean(1)


def test_every_block_is_found_with_its_patch_factor(small_dit):
    layers = find_attention_layers(small_dit)
    assert [(layer.name, layer.factor) for layer in layers] == [("blocks.0", 2), ("blocks.1", 2), ("blocks.2", 2)]
    assert all(layer.function is dit for layer in layers)


def test_captured_probabilities_equal_direct_softmax(small_dit):
    x, t, ctx = inputs()
    seen = {}

    def record(name):
        def hook(module, args, kwargs, output):
            seen[name] = (args[0].clone(), args[1], kwargs.get("rope_emb"))
        return hook

    observed = []
    capture = AttentionCapture(foreground="uncond")
    capture.observer = lambda layer, roles, s, c: observed.append((layer.name, roles, s, c))
    handles = [m.register_forward_hook(record(f"blocks.{i}.{kind}"), with_kwargs=True)
               for i, b in enumerate(small_dit.blocks) for kind, m in (("self", b.self_attn), ("cross", b.cross_attn))]
    try:
        with capture.attach(small_dit):
            capture.plan_step([Cond(0), Uncond(0)])
            small_dit(x, t, context=ctx)
    finally:
        for h in handles:
            h.remove()
    assert sorted(name for name, *_ in observed) == ["blocks.0", "blocks.1", "blocks.2"]
    for name, roles, s, c in observed:
        assert roles == [Cond(0), Uncond(0)]
        block = small_dit.get_submodule(name)
        x1, _, rope = seen[name + ".self"]
        x2, c2, _ = seen[name + ".cross"]
        torch.testing.assert_close(s, reference_probs(block.self_attn, x1, None, rope))
        torch.testing.assert_close(c, reference_probs(block.cross_attn, x2, c2, rope))
        assert s.shape == (2, 60, 60) and c.shape == (2, 60, 10)


def test_outputs_bit_identical_and_the_function_restored(small_dit):
    x, t, ctx = inputs()
    plain = small_dit(x, t, context=ctx)
    original = dit.attention_function
    capture = AttentionCapture()
    with capture.attach(small_dit):
        assert dit.attention_function is not original
        capture.plan_step([Cond(0), Uncond(0)])
        hooked = small_dit(x, t, context=ctx)
        regions, foreground = capture.masks()[Cond(0)]
    assert torch.equal(plain, hooked)
    assert dit.attention_function is original and hook_count(small_dit) == 0
    assert regions.shape == (1, 10, *LATENT) and foreground.shape == (1, 1, *LATENT)

    with pytest.raises(KeyboardInterrupt), capture.attach(small_dit):
        raise KeyboardInterrupt
    assert dit.attention_function is original and hook_count(small_dit) == 0


def test_only_the_blocks_asked_for_are_read(small_dit):
    x, t, ctx = inputs()
    observed = []
    capture = AttentionCapture(blocks=[1])
    capture.observer = lambda layer, roles, s, c: observed.append(layer.name)
    with capture.attach(small_dit):
        capture.plan_step([Cond(0), Uncond(0)])
        small_dit(x, t, context=ctx)
        assert capture.masks()
    assert observed == ["blocks.1"]


def test_null_keys_are_each_rows_background(small_dit):
    # row 0: 4 tokens then zero padding; row 1: 7 tokens then zero padding
    x, t, ctx = inputs(pad_from=[4, 7])
    keys = {}
    small_dit.blocks[0].cross_attn.k_norm.register_forward_hook(lambda m, a, out: keys.update(k=out))
    small_dit(x, t, context=ctx)
    k = keys["k"][:, :, 0]  # (B, T, d): one head
    small_dit.blocks[0].cross_attn.k_norm._forward_hooks.clear()
    assert torch.equal(_row_backgrounds(k, "null")[:, 0], torch.tensor([[0.0] * 4 + [1.0] * 6, [0.0] * 7 + [1.0] * 3]))
    assert torch.equal(_row_backgrounds(k, "end")[:, 0], torch.tensor([[0.0] * 3 + [1.0] * 7, [0.0] * 6 + [1.0] * 4]))
    assert not _row_backgrounds(k, "image")[:, 0].any()

    # the foreground as semantic_masks computes it from the same maps, with each row's background
    observed = []
    capture = AttentionCapture(foreground="cond", refine="none")
    capture.observer = lambda layer, roles, s, c: observed.append((s, c))
    with capture.attach(small_dit):
        capture.plan_step([Cond(0), Cond(1)])
        small_dit(x, t, context=ctx)
        got = capture.masks()
    for row, start in enumerate([4, 7]):
        layers = [(s[row : row + 1], c[row : row + 1], (6, 10)) for s, c in observed]
        regions, foreground = M.semantic_masks(layers, LATENT, background_tokens=range(start, 10), refine="none")
        torch.testing.assert_close(got[Cond(row)][0], regions)
        torch.testing.assert_close(got[Cond(row)][1], foreground)


def test_scfg_run_guides_the_dit(small_dit):
    x, t, ctx = inputs()
    run = ScfgRun(Settings(enabled=True), keep_maps=True)
    with run.attached(small_dit):
        run.begin_step([Cond(0), Uncond(0)], 0.0)
        out = small_dit(torch.cat([x[:1], x[:1]]), t, context=ctx)
        rates = run.rates(out[1:], {Cond(0): out[0]}, 7.0)
    assert set(rates) == {Cond(0)} and rates[Cond(0)].shape == (1, *LATENT)


def test_the_zero_padded_text_has_zero_keys():
    te = MM.TextEncoder(len(MM.DIT_CONFIG["vocab"]), 64, 0, 4, zero_padding=True)
    tok = MM.tokenizer_for(MM.DIT_CONFIG)
    ids = tok.encode(["a red circle", ""])
    assert ids[0, :4].tolist() == [tok.index["a"], tok.index["red"], tok.index["circle"], tok.eot]
    ctx = te(ids)
    assert ctx[0, :4].abs().amax(-1).gt(0).all() and not ctx[0, 4:].any()
    assert ctx[1, 0].abs().amax() > 0 and not ctx[1, 1:].any()  # the empty prompt keeps its end token


def test_pooled_maps_are_the_strided_queries_and_summed_keys(small_dit):
    x, t, ctx = inputs()
    full, pooled = [], []
    for pool, out in ((False, full), (True, pooled)):
        capture = AttentionCapture(pool=pool)
        capture.observer = lambda layer, roles, s, c, out=out: out.append((s, c))
        with capture.attach(small_dit):
            capture.plan_step([Cond(0), Uncond(0)])
            small_dit(x, t, context=ctx)
            assert capture.masks()
    cells = (torch.arange(6)[:, None] // 2 * 5 + torch.arange(10)[None] // 2).flatten()  # 6x10 tokens -> 3x5
    picked = (torch.arange(6)[::2, None] * 10 + torch.arange(10)[None, ::2]).flatten()
    for (s, c), (sp, cp) in zip(full, pooled, strict=True):
        assert sp.shape == (1, 15, 15) and cp.shape == (1, 15, 10)
        summed = torch.zeros(1, 60, 15).index_add_(2, cells, s)
        torch.testing.assert_close(sp, summed[:, picked])
        torch.testing.assert_close(cp, c[:, picked])
