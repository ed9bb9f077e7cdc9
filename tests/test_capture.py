"""Attention capture on the real ldm UNetModel, with fused forwards swapped in at class level as A1111 does."""

import contextlib

import pytest
import torch
from attention_forwards import installed, scaled_dot_product_attention_forward, split_cross_attention_forward
from conftest import hook_count

from scfg_ext import AttentionCapture, Cond, ScfgRun, Settings, Uncond, find_attention_layers

LATENT = (24, 40)  # non-square; /4 = 6x10, /8 = 3x5


def inputs(b=2, tokens=77, seed=0):
    gen = torch.Generator().manual_seed(seed)
    return (torch.randn(b, 4, *LATENT, generator=gen), torch.full((b,), 500),
            torch.randn(b, tokens, 768, generator=gen))


def reference_probs(module, x, context):
    """softmax(q k^T * scale) per head from the module's own to_q/to_k, averaged over heads."""
    context = x if context is None else context
    h = module.heads
    q, k = module.to_q(x), module.to_k(context)
    b, n, inner = q.shape
    d = inner // h
    q = q.reshape(b, n, h, d).permute(0, 2, 1, 3)
    k = k.reshape(b, -1, h, d).permute(0, 2, 1, 3)
    return (torch.einsum("bhid,bhjd->bhij", q, k) * module.scale).softmax(-1).mean(1)


def test_layers_are_the_latent4_and_latent8_blocks(small_unet):
    names = [(layer.name, layer.factor) for layer in find_attention_layers(small_unet)]
    assert names == [("input_blocks.5.1.transformer_blocks.0", 4), ("middle_block.1.transformer_blocks.0", 8),
                     ("output_blocks.2.1.transformer_blocks.0", 4), ("output_blocks.3.1.transformer_blocks.0", 4)]


@pytest.mark.parametrize("forward", [scaled_dot_product_attention_forward, split_cross_attention_forward])
def test_captured_probabilities_equal_direct_softmax(small_unet, forward):
    x, t, ctx = inputs()
    seen_inputs = {}

    def record(name):
        def hook(module, args, kwargs, output):
            seen_inputs[name] = (args[0].clone(), kwargs.get("context"))
        return hook

    observed = []
    capture = AttentionCapture(foreground="uncond")
    capture.observer = lambda layer, roles, s, c: observed.append((layer.name, roles, s, c))
    handles = []
    for layer in find_attention_layers(small_unet):
        handles.append(layer.attn1.register_forward_hook(record(layer.name + ".attn1"), with_kwargs=True))
        handles.append(layer.attn2.register_forward_hook(record(layer.name + ".attn2"), with_kwargs=True))
    try:
        with installed(forward), capture.attach(small_unet):
            capture.plan_step([Cond(0), Uncond(0)])
            small_unet(x, t, context=ctx)
    finally:
        for h in handles:
            h.remove()
    # every layer once (processed in groups of equal shape, so not in U-Net order)
    assert sorted(name for name, *_ in observed) == sorted(layer.name for layer in capture.layers)
    for name, roles, s, c in observed:
        assert roles == [Cond(0), Uncond(0)]
        x1, _ = seen_inputs[name + ".attn1"]
        x2, c2 = seen_inputs[name + ".attn2"]
        torch.testing.assert_close(s, reference_probs(small_unet.get_submodule(name).attn1, x1, None))
        torch.testing.assert_close(c, reference_probs(small_unet.get_submodule(name).attn2, x2, c2))
        assert s.shape[-1] == s.shape[-2] and c.shape[-1] == 77
        torch.testing.assert_close(c.sum(-1), torch.ones(c.shape[:2]))


def test_only_needed_rows_are_computed(small_unet):
    x, t, ctx = inputs(b=3)
    observed = []
    capture = AttentionCapture(foreground="cond")
    capture.observer = lambda layer, roles, s, c: observed.append((roles, s.shape[0]))
    with capture.attach(small_unet):
        capture.plan_step([Cond(0), Uncond(0), None])
        small_unet(x, t, context=ctx)
    assert observed and all(roles == [Cond(0)] and n == 1 for roles, n in observed)


@pytest.mark.parametrize("forward", [None, scaled_dot_product_attention_forward])
def test_module_outputs_bit_identical(small_unet, forward):
    x, t, ctx = inputs()
    with installed(forward) if forward else contextlib.nullcontext():
        plain = small_unet(x, t, context=ctx)
        capture = AttentionCapture(foreground="uncond")
        with capture.attach(small_unet):
            capture.plan_step([Cond(0), Uncond(0)])
            hooked = small_unet(x, t, context=ctx)
            assert capture.masks()
    assert torch.equal(plain, hooked)


def test_hooks_removed_after_exit_and_exception(small_unet):
    assert hook_count(small_unet) == 0
    capture = AttentionCapture()
    with capture.attach(small_unet):
        assert hook_count(small_unet) == 2 + 4 * len(capture.layers)
    assert hook_count(small_unet) == 0 and not capture.attached

    x, t, ctx = inputs()
    with pytest.raises(RuntimeError, match="sampling failed"), capture.attach(small_unet):
        capture.plan_step([Cond(0), Uncond(0)])
        small_unet(x, t, context=ctx)
        raise RuntimeError("sampling failed")
    assert hook_count(small_unet) == 0

    run = ScfgRun(Settings(enabled=True))
    with pytest.raises(KeyboardInterrupt), run.attached(small_unet):
        raise KeyboardInterrupt
    assert hook_count(small_unet) == 0


def test_unexpected_map_size_skips_the_step_with_one_warning(small_unet):
    x, t, ctx = inputs()
    warnings = []
    run = ScfgRun(Settings(enabled=True), warn=warnings.append)
    with run.attached(small_unet):
        # as if another extension (Kohya deep shrink) changed a block's feature size
        run.capture.layers[0].factor = 2
        for _ in range(2):
            run.begin_step([Cond(0), Uncond(0)], 0.0)
            out = small_unet(x, t, context=ctx)
            uncond, cond = out[1:], out[:1]
            combined = run.combine(uncond, [[(cond[0], 1.0)]], 7.5)
            assert torch.equal(combined, uncond + (cond - uncond) * 7.5)
    assert len(warnings) == 1 and "does not fit" in warnings[0]
    assert run.steps_applied == 0
