"""A guided step never makes the host wait for the device, and its per-step work is a fixed, small number of
kernels: counted with a ``TorchDispatchMode`` (``opcount.OpKinds``) around ``begin_step`` + the network call +
the combination, on the real ldm U-Net and on the miniature diffusion transformers (Anima's blocks, NextDiT's
and Chroma's joint attention). No timing: operations are counted, which on a GPU are what costs host time."""

import pytest
import torch

from scfg_ext import Cond, ScfgRun, Settings, Uncond, testbed
from scfg_ext.miniature import dit, mmdit, nextdit
from scfg_ext.opcount import OpKinds

LATENT = (16, 24)


def networks():
    torch.manual_seed(0)
    return {
        "unet": (testbed.build_unet(testbed.small_config(testbed.SD15_UNET), seed=0), 4, 768),
        "dit": (dit.MiniatureDiT(dim=32, depth=3, heads=4, context_dim=16), 4, 16),
        "nextdit": (nextdit.MiniatureNextDiT(dim=32, depth=3, heads=4, context_dim=16, axes=(2, 2, 4)), 4, 16),
        "mmdit": (mmdit.MiniatureMMDiT(dim=32, depth=2, depth_single=2, heads=4, context_dim=16, axes=(2, 2, 4)),
                  4, 16),
    }


NETWORKS = networks()


def guided_steps(name, steps=3, settings=None, batch=1):
    """Run ``steps`` guided steps; return the ``OpKinds`` of the last step (after warm-up: constants are made
    once per device) and of its combination alone (``masks()`` included), and the run."""
    net, channels, context_dim = NETWORKS[name]
    net = net.eval().requires_grad_(False)
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(2 * batch, channels, *LATENT, generator=gen)
    t = torch.full((2 * batch,), 500.0)
    tokens = 77 if name == "unet" else 10
    ctx = torch.randn(2 * batch, tokens, context_dim, generator=gen)
    roles = [Cond(i) for i in range(batch)] + [Uncond(i) for i in range(batch)]
    run = ScfgRun(settings or Settings(enabled=True))
    with torch.no_grad(), run.attached(net):
        for _ in range(steps):
            step, combination = OpKinds(), OpKinds()
            with step:
                run.begin_step(roles, 0.5)
                out = net(x, t, context=ctx)
                with combination:
                    denoised = run.combine(out[batch:], [[(out[i], 1.0)] for i in range(batch)], 7.0)
    assert run.steps_applied == steps and torch.isfinite(denoised).all()
    return step, combination, run


@pytest.mark.parametrize("name", list(NETWORKS))
def test_a_guided_step_never_waits_for_the_device(name):
    step, _, run = guided_steps(name)
    assert step.syncs == [] and step.counts["sync"] == 0
    run.finish()  # the pass's one read of what the notices need
    assert not run.found_no_foreground()


@pytest.mark.parametrize("name", ["unet", "dit"])
def test_masks_and_combination_take_a_fixed_small_number_of_kernels(name):
    """``masks()`` and the combination: at most 30 kernels for one image (plain CFG's own combination, 5 of them,
    included; 56 and 3 syncs before), and for 4 images fewer than twice as many (the rows of a call are computed
    together; plain CFG's own combination alone grows by 12)."""
    _, one, _ = guided_steps(name, steps=2)
    _, four, _ = guided_steps(name, steps=2, batch=4)
    assert one.counts["sync"] == 0 and one.counts["launch"] <= 30, one.counts
    assert four.counts["launch"] < 2 * one.counts["launch"], (one.counts, four.counts)


def test_the_notices_evidence_is_read_at_the_end_of_the_pass():
    """An empty foreground on every step is found when the pass ends (``finish``), not by a read per step; a
    non-finite model output is a notice then."""
    warned = []
    run = ScfgRun(Settings(enabled=True), warn=warned.append)
    with run.attached(NETWORKS["unet"][0]), torch.no_grad():
        gen = torch.Generator().manual_seed(2)
        x, ctx = torch.randn(2, 4, *LATENT, generator=gen), torch.randn(2, 77, 768, generator=gen)
        for value in (1.0, float("nan")):
            run.begin_step([Cond(0), Uncond(0)], 0.5)
            out = NETWORKS["unet"][0](x, torch.full((2,), 500.0), context=ctx)
            run.combine(out[1:], [[(out[0] + value, 1.0)]], 7.0)
            assert warned == []
    run.finish()
    assert len(warned) == 1 and "non-finite" in warned[0]
