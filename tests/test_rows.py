"""Row bookkeeping: which U-Net rows are whose, across AND prompts, split calls, long prompts and missing uncond."""

import torch

from scfg_ext import AttentionCapture, Cond, Uncond, semantic_masks

LATENT = (32, 32)
T_STEP = torch.tensor([400])


def ctx(seed, tokens=77):
    return torch.randn(1, tokens, 768, generator=torch.Generator().manual_seed(seed))


X = torch.randn(2, 4, *LATENT, generator=torch.Generator().manual_seed(99))


def capture_step(unet, calls, foreground="cond", observer=None):
    """Run one step made of ``calls`` = [(rows of (x, context, role))...]; return the capture's masks."""
    capture = AttentionCapture(foreground=foreground)
    capture.observer = observer
    with capture.attach(unet):
        capture.plan_step([role for call in calls for _, _, role in call])
        for call in calls:
            x = torch.cat([r[0] for r in call])
            c = torch.cat([r[1] for r in call])
            unet(x, T_STEP.expand(len(call)), context=c)
        return capture.masks()


def alone(unet, x, context, foreground_context=None):
    """Masks of one cond row computed on its own (its foreground from ``foreground_context`` if given)."""
    masks = capture_step(unet, [[(x, context, Cond(0))]])[Cond(0)]
    if foreground_context is not None:
        fg = capture_step(unet, [[(x, foreground_context, Cond(0))]])[Cond(0)][1]
        masks = (masks[0], fg)
    return masks


def same(a, b, tol=0.0):
    """One-hot/binary masks equal, up to a fraction ``tol`` of cells (float near-ties between batchings)."""
    return a.shape == b.shape and (a != b).float().mean().item() <= tol


def test_batch_of_two_with_an_and_prompt(small_unet):
    x0, x1 = X[:1], X[1:]
    c00, c01, c10, u0, u1 = ctx(1), ctx(2), ctx(3), ctx(4), ctx(5)
    # A1111 layout: image 0's two AND sub-prompts, image 1's prompt, then one uncond row per image
    masks = capture_step(small_unet, [[(x0, c00, Cond(0, 0)), (x0, c01, Cond(0, 1)), (x1, c10, Cond(1, 0)),
                                       (x0, u0, Uncond(0)), (x1, u1, Uncond(1))]], foreground="uncond")
    assert set(masks) == {Cond(0, 0), Cond(0, 1), Cond(1, 0)}
    for role, x, c, u in ((Cond(0, 0), x0, c00, u0), (Cond(0, 1), x0, c01, u0), (Cond(1, 0), x1, c10, u1)):
        ref_regions, ref_fg = alone(small_unet, x, c, foreground_context=u)
        # the U-Net itself differs by ~1e-6 between batch sizes; that may flip one near-tied grid cell
        assert same(masks[role][0], ref_regions, tol=0.02), role
        assert same(masks[role][1], ref_fg, tol=0.02), role
    # every image has its own masks: no sharing across the batch or the AND sub-prompts
    assert not torch.equal(masks[Cond(0, 0)][0], masks[Cond(1, 0)][0][:, :77])
    assert not torch.equal(masks[Cond(0, 0)][0], masks[Cond(0, 1)][0])


def test_cond_and_uncond_in_separate_calls_with_154_vs_77_tokens(small_unet):
    x0 = X[:1]
    cond = torch.cat([ctx(11), ctx(12)], 1)  # a 2-chunk prompt, 154 tokens
    uncond = ctx(13)
    layers = []
    observer = lambda layer, roles, s, c: layers.extend(
        (s[i:i + 1], c[i:i + 1], None) for i, r in enumerate(roles) if isinstance(r, Cond))
    # cond rows in one call, the uncond row in a separate call (A1111 when lengths differ, unpadded)
    masks = capture_step(small_unet, [[(x0, cond, Cond(0))], [(x0, uncond, Uncond(0))]], foreground="uncond",
                         observer=observer)
    regions, fg = masks[Cond(0)]
    assert regions.shape == (1, 154, *LATENT)
    # the streamed result equals semantic_masks on the same maps, with both chunks' SOT as background
    sizes = [(8, 8) if c.shape[1] == 64 else (4, 4) for _, c, _ in layers]
    ref_regions, _ = semantic_masks([(s, c, hw) for (s, c, _), hw in zip(layers, sizes, strict=True)], LATENT,
                                    background_tokens=(0, 77))
    # the capture's batched, reduce-first products round differently from the per-layer reference: near-ties
    assert same(regions.argmax(1), ref_regions.argmax(1), tol=0.01)
    # the foreground came from the separate uncond call
    assert same(fg, alone(small_unet, x0, cond, foreground_context=uncond)[1], tol=0.02)
    assert not torch.equal(fg, alone(small_unet, x0, cond)[1])


def test_missing_uncond_falls_back_to_cond_foreground(small_unet):
    x0, c, u = X[:1], ctx(21), ctx(22)
    # skip_uncond steps (NGMS, Skip Early CFG): only cond rows reach the U-Net
    masks = capture_step(small_unet, [[(x0, c, Cond(0))]], foreground="uncond")
    ref = capture_step(small_unet, [[(x0, c, Cond(0))]], foreground="cond")
    assert torch.equal(masks[Cond(0)][1], ref[Cond(0)][1])
    with_uncond = capture_step(small_unet, [[(x0, c, Cond(0)), (x0, u, Uncond(0))]], foreground="uncond")
    assert not torch.equal(with_uncond[Cond(0)][1], ref[Cond(0)][1])


def test_row_order_does_not_matter_but_roles_do(small_unet):
    x0, c, u = X[:1], ctx(31), ctx(32)
    cond_first = capture_step(small_unet, [[(x0, c, Cond(0)), (x0, u, Uncond(0))]], foreground="uncond")
    uncond_first = capture_step(small_unet, [[(x0, u, Uncond(0)), (x0, c, Cond(0))]], foreground="uncond")
    swapped = capture_step(small_unet, [[(x0, c, Uncond(0)), (x0, u, Cond(0))]], foreground="uncond")
    assert same(cond_first[Cond(0)][0], uncond_first[Cond(0)][0], tol=0.02)
    assert same(cond_first[Cond(0)][1], uncond_first[Cond(0)][1], tol=0.02)
    assert not torch.equal(cond_first[Cond(0)][0], swapped[Cond(0)][0])


def test_unplanned_rows_and_incomplete_rows_are_ignored(small_unet):
    x0, c = X[:1], ctx(41)
    capture = AttentionCapture()
    with capture.attach(small_unet):
        capture.plan_step([])  # nothing planned: nothing computed
        small_unet(x0, T_STEP, context=c)
        assert capture.masks() == {}
        capture.plan_step([Cond(0)])
        small_unet.middle_block(torch.randn(1, 128, 4, 4), torch.zeros(1, 128), c)  # only one block ran
        assert capture.masks() == {}


def test_roles_given_per_call_equal_roles_planned_per_step(small_unet):
    # backends that know each call's rows (Forge's cond_or_uncond) declare them call by call
    x0, c, u = X[:1], ctx(51), ctx(52)
    planned = capture_step(small_unet, [[(x0, c, Cond(0))], [(x0, u, Uncond(0))]], foreground="uncond")
    capture = AttentionCapture(foreground="uncond")
    with capture.attach(small_unet):
        capture.plan_step([])
        capture.plan_call([Cond(0)])
        small_unet(x0, T_STEP, context=c)
        capture.plan_call([Uncond(0)])
        small_unet(x0, T_STEP, context=u)
        per_call = capture.masks()
    assert torch.equal(per_call[Cond(0)][0], planned[Cond(0)][0])
    assert torch.equal(per_call[Cond(0)][1], planned[Cond(0)][1])
