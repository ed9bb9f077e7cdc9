"""Attention capture on the real ldm UNetModel, with fused forwards swapped in at class level as A1111 does."""

import contextlib

import pytest
import torch
from attention_forwards import installed, scaled_dot_product_attention_forward, split_cross_attention_forward
from conftest import hook_count

from scfg_ext import AttentionCapture, Cond, ScfgRun, Settings, Uncond, find_attention_layers, semantic_masks, testbed
from scfg_ext import masks as M

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


# ---------------------------------------------------------------- against the method on reference probabilities


def run_reference(unet, x, t, ctx, rows, key_context=None):
    """Per layer, the head-averaged probabilities recomputed from the module's own to_q/to_k on the inputs the
    U-Net gave it (``reference_probs``), for ``rows``; returns [(layer, self, cross, (h, w))]. ``key_context``:
    what the attention forward does to the cross-attention context before ``to_k``."""
    seen = {}

    def record(name):
        def hook(module, args, kwargs, output):
            seen[name] = (args[0], kwargs.get("context", args[1] if len(args) > 1 else None))
        return hook

    layers = find_attention_layers(unet)
    handles = [m.register_forward_hook(record(f"{layer.name}.{a}"), with_kwargs=True)
               for layer in layers for a, m in (("attn1", layer.attn1), ("attn2", layer.attn2))]
    try:
        unet(x, t, context=ctx)
    finally:
        for h in handles:
            h.remove()
    out = []
    for layer in layers:
        x1, _ = seen[layer.name + ".attn1"]
        x2, c2 = seen[layer.name + ".attn2"]
        s = reference_probs(layer.attn1, x1[rows], None)
        c = reference_probs(layer.attn2, x2[rows], (key_context or (lambda c: c))(c2[rows]))
        hw = M.grid_size(x.shape[-2:], layer.factor)
        out.append((layer, s, c, hw))
    return out


def reference_sums(layers, latent, refine):
    """The per-layer path (``layer_maps`` + ``MaskAccumulator.add_tokens``, what ``semantic_masks`` runs)."""
    acc = M.MaskAccumulator()
    grid = M.grid_size(latent)
    for _, s, c, hw in layers:
        pair_w = M.pair_weights(c.shape[-1], M.chunk_starts(c.shape[-1]), c.device)
        acc.add_tokens(M.layer_maps(s, c, hw, grid, refine), pair_w)
    return acc.tokens(), acc.pair()


@pytest.fixture(scope="module")
def small_sdxl_unet():
    return testbed.build_sdxl_unet(testbed.SDXL_SMALL, depths=(0, 1, 2))


C2U1 = [Cond(0), Cond(1), Uncond(0)]
C1U1C2 = [Cond(0), Uncond(0), Cond(1)]  # needed rows 0 and 2: not contiguous


@pytest.mark.parametrize("model,forward,refine,roles", [
    ("sd", scaled_dot_product_attention_forward, "official", C2U1),
    ("sd", split_cross_attention_forward, "paper", C2U1),
    ("sd", None, "none", C2U1),
    ("sd", scaled_dot_product_attention_forward, "official", C1U1C2),
    ("sdxl", scaled_dot_product_attention_forward, "official", C2U1),
])
def test_masks_equal_the_method_on_reference_probabilities(small_unet, small_sdxl_unet, model, forward, refine,
                                                           roles):
    unet = small_unet if model == "sd" else small_sdxl_unet
    dim = 768 if model == "sd" else 64
    gen = torch.Generator().manual_seed(5)
    x, t, ctx = torch.randn(3, 4, *LATENT, generator=gen), torch.full((3,), 500), torch.randn(3, 77, dim, generator=gen)
    rows = [i for i, r in enumerate(roles) if isinstance(r, Cond)]
    capture = AttentionCapture(refine=refine, foreground="cond")
    with installed(forward) if forward else contextlib.nullcontext():
        ref = run_reference(unet, x, t, ctx, rows)
        with capture.attach(unet):
            capture.plan_step(roles)
            unet(x, t, context=ctx)
            got = capture.masks()
    tokens, pair = reference_sums(ref, LATENT, refine)
    acc = capture._calls[0].acc  # the continuous sums, before argmax
    torch.testing.assert_close(acc.tokens(), tokens, rtol=2e-4, atol=1e-5)
    torch.testing.assert_close(acc.pair(), pair, rtol=2e-4, atol=1e-5)
    regions, fg = semantic_masks([(s, c, hw) for _, s, c, hw in ref], LATENT, refine=refine)
    for j, i in enumerate(rows):
        role = roles[i]
        # argmax decisions: at most one near-tied grid cell of the 6x10 grid (1/60 of the latent) may flip
        assert (got[role][0] != regions[j : j + 1]).any(1).float().mean() < 0.02
        assert (got[role][1] != fg[j : j + 1]).float().mean() < 0.02


def test_chunked_processing_gives_the_same_maps(small_sdxl_unet):
    gen = torch.Generator().manual_seed(6)
    x, t, ctx = torch.randn(2, 4, *LATENT, generator=gen), torch.full((2,), 500), torch.randn(2, 77, 64, generator=gen)
    sums, chunks = [], []
    for budget in (None, 1):  # default: one chunk; 1 byte: every layer alone, self scores one row's heads at a time
        capture = AttentionCapture(foreground="uncond", memory_budget=budget)
        capture.on_process = chunks.append
        with installed(scaled_dot_product_attention_forward), capture.attach(small_sdxl_unet):
            capture.plan_step([Cond(0), Uncond(0)])
            small_sdxl_unet(x, t, context=ctx)
            assert capture.masks()
        sums.append((capture._calls[0].acc.tokens(), capture._calls[0].acc.pair()))
        chunks.append("|")
    n = len(find_attention_layers(small_sdxl_unet))
    assert chunks == [n, "|"] + [1] * n + ["|"]
    torch.testing.assert_close(sums[0], sums[1], rtol=1e-5, atol=1e-6)


def count_ops(fn) -> int:
    from torch.utils._python_dispatch import TorchDispatchMode

    class Count(TorchDispatchMode):
        n = 0

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            Count.n += 1
            return func(*args, **(kwargs or {}))

    with Count():
        fn()
    return Count.n


def test_added_operations_do_not_grow_with_the_number_of_layers():
    """The SDXL structure with 1 and 3 transformer blocks per latent/4 transformer (4 and 12 captured layers):
    S-CFG adds the same number of tensor operations to a U-Net call."""
    gen = torch.Generator().manual_seed(7)
    x, t, ctx = torch.randn(2, 4, *LATENT, generator=gen), torch.full((2,), 500), torch.randn(2, 77, 64, generator=gen)
    added = {}
    with installed(scaled_dot_product_attention_forward):
        for depth in (1, 3):
            unet = testbed.build_sdxl_unet(testbed.SDXL_SMALL, depths=(0, 1, depth))
            plain = count_ops(lambda u=unet: u(x, t, context=ctx))
            capture = AttentionCapture()
            with capture.attach(unet):
                capture.plan_step([Cond(0), Uncond(0)])
                unet(x, t, context=ctx)  # warm the caches (constant tensors made once per device)
                capture.plan_step([Cond(0), Uncond(0)])
                hooked = count_ops(lambda u=unet: u(x, t, context=ctx))
                assert capture.masks() and len(capture.layers) == 4 * depth
            added[depth] = hooked - plain
    assert added[1] == added[3] and 0 < added[1] <= 40, added


# ---------------------------------------------------------------- what other extensions do to the projections


def forward_with(self_keys=None, cross_context=None, to_k_twice=False):
    """sdp forward variants: extra self-attention keys (reference-only ControlNet), a changed key context
    (hypernetworks), or to_k run twice."""
    def forward(self, x, context=None, mask=None, **kwargs):
        h = self.heads
        is_self = context is None
        context = x if context is None else context
        q = self.to_q(x)
        ctx_k = context
        if is_self and self_keys is not None:
            ctx_k = torch.cat([context, self_keys(context)], 1)
        if not is_self and cross_context is not None:
            ctx_k = cross_context(context)
        k = self.to_k(ctx_k)
        if to_k_twice:
            k = self.to_k(ctx_k)
        v = self.to_v(ctx_k)
        b, n, inner = q.shape
        q, k, v = (z.reshape(b, z.shape[1], h, inner // h).transpose(1, 2) for z in (q, k, v))
        out = torch.nn.functional.scaled_dot_product_attention(q, k, v)
        return self.to_out(out.transpose(1, 2).reshape(b, n, inner))
    return forward


@pytest.mark.parametrize("variant,message", [
    (dict(self_keys=lambda c: c.flip(1)), "do not match"),
    (dict(to_k_twice=True), "more than once"),
])
def test_unusable_projections_skip_the_step_without_raising(small_unet, variant, message):
    x, t, ctx = inputs()
    with installed(forward_with(**variant)):
        plain = small_unet(x, t, context=ctx)
        capture = AttentionCapture()
        with capture.attach(small_unet):
            capture.plan_step([Cond(0), Uncond(0)])
            hooked = small_unet(x, t, context=ctx)
            assert capture.masks() == {} and message in capture.error
    assert torch.equal(plain, hooked)


def test_keys_include_what_the_forward_does_to_the_context(small_unet):
    """A hypernetwork changes the context before to_k inside the attention forward: the captured cross maps
    are those of the changed keys (the old recomputation missed them)."""
    x, t, ctx = inputs()
    change = lambda c: torch.tanh(c) * 3  # noqa: E731
    observed = {}
    capture = AttentionCapture()
    capture.observer = lambda layer, roles, s, c: observed.setdefault(layer.name, c)
    ref = {}
    with installed(forward_with(cross_context=change)):
        for layer, _, c, _ in run_reference(small_unet, x, t, ctx, [0], key_context=change):
            ref[layer.name] = c
        with capture.attach(small_unet):
            capture.plan_step([Cond(0), Uncond(0)])
            small_unet(x, t, context=ctx)
    assert set(observed) == set(ref)
    for name, c in observed.items():
        torch.testing.assert_close(c, ref[name])


def test_capture_under_inference_mode(small_unet):
    x, t, ctx = inputs()
    capture = AttentionCapture()
    with torch.inference_mode(), capture.attach(small_unet):
        capture.plan_step([Cond(0), Uncond(0)])
        small_unet(x, t, context=ctx)
        assert capture.masks() and capture.error is None
