"""End to end: real k-diffusion samplers around the real ldm U-Net, plain CFG vs S-CFG."""

import pytest
import torch
from conftest import hook_count

from scfg_ext import ScfgRun, Settings, testbed

STEPS = 4


def setup(unet, b=2, latent=(24, 32), seed=0, parameterization="eps"):
    gen = torch.Generator().manual_seed(seed)
    den = testbed.k_denoiser(unet, parameterization)
    sigmas = den.get_sigmas(STEPS)
    x = torch.randn(b, 4, *latent, generator=gen) * sigmas[0]
    cond = torch.randn(b, 77, 768, generator=gen)
    uncond = torch.randn(1, 77, 768, generator=gen).expand(b, -1, -1)
    return den, sigmas, x, cond, uncond


def sample(k_diffusion, name, unet, den, sigmas, x, cond, uncond, run=None):
    sampling, _ = k_diffusion
    total = STEPS * (2 if name == "sample_heun" else 1)
    model = testbed.CFGModel(den, cond, uncond, 7.5, run=run, total_steps=total)
    torch.manual_seed(1)
    if run is None:
        return sampling.__dict__[name](model, x.clone(), sigmas, disable=True)
    with run.attached(unet):
        return sampling.__dict__[name](model, x.clone(), sigmas, disable=True)


@pytest.mark.parametrize("name", ["sample_euler", "sample_heun", "sample_dpmpp_2m"])
def test_disabled_is_bit_identical_and_enabled_differs(small_unet, k_diffusion, name):
    den, sigmas, x, cond, uncond = setup(small_unet)
    plain = sample(k_diffusion, name, small_unet, den, sigmas, x, cond, uncond)
    off = sample(k_diffusion, name, small_unet, den, sigmas, x, cond, uncond, ScfgRun(Settings(enabled=False)))
    assert torch.equal(plain, off)
    run = ScfgRun(Settings(enabled=True))
    on = sample(k_diffusion, name, small_unet, den, sigmas, x, cond, uncond, run)
    assert torch.isfinite(on).all()
    assert (on - plain).abs().max() > 1e-3
    expected_calls = STEPS * 2 - 1 if name == "sample_heun" else STEPS  # Heun's last step is Euler
    assert run.steps_applied == expected_calls
    assert hook_count(small_unet) == 0


def test_v_prediction_and_step_window(small_unet, k_diffusion):
    den, sigmas, x, cond, uncond = setup(small_unet, b=1, parameterization="v")
    plain = sample(k_diffusion, "sample_euler", small_unet, den, sigmas, x, cond, uncond)
    run = ScfgRun(Settings(enabled=True, start=0.5, end=1.0))
    on = sample(k_diffusion, "sample_euler", small_unet, den, sigmas, x, cond, uncond, run)
    assert run.steps_applied == STEPS // 2
    assert torch.isfinite(on).all() and not torch.equal(on, plain)


def test_image_result_does_not_depend_on_batch_mates(small_unet, k_diffusion):
    den, sigmas, x, cond, uncond = setup(small_unet, b=2)
    both = sample(k_diffusion, "sample_euler", small_unet, den, sigmas, x, cond, uncond,
                  ScfgRun(Settings(enabled=True)))
    first = sample(k_diffusion, "sample_euler", small_unet, den, sigmas, x[:1], cond[:1], uncond[:1],
                   ScfgRun(Settings(enabled=True)))
    # equal up to the U-Net's own float noise between batch sizes (1e-4 here); S-CFG itself changes the
    # result by far more than the tolerance (see the test above), so shared masks would fail this
    torch.testing.assert_close(both[:1], first, rtol=1e-3, atol=1e-3)
