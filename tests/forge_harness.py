"""Forge on top of the A1111 stand-in (Forge keeps A1111 1.10's ``modules.scripts``, ``script_callbacks``,
``processing`` flow and samplers): what differs is mirrored from Forge @ dfdcbab and swapped in for a test
module, see ``forge_webui``.

* ``CFGDenoiser.forward`` -> ``forge_forward`` (``modules/sd_samplers_cfg_denoiser.py``:156-228): the U-Net
  runs through ``backend.sampling.sampling_function``; ``combine_denoised`` is never called.
* ``p.sd_model.forge_objects`` is reset from ``forge_objects_after_applying_lora`` right before every
  ``process_before_every_sampling`` (``modules/processing.py``:1373-1381, :1518-1526, :1851-1859).
* The whole generation runs under ``torch.inference_mode()`` (``modules/processing.py``:911); ``generate``.
* The U-Net is reached through ``forge_objects.unet`` (``backend/patcher/unet.py``), whose model runs the
  real ldm U-Net with Forge's transformer-block patch dispatch (``backend/nn/unet.py``).
"""

from __future__ import annotations

import contextlib
import sys

import torch
import webui_harness as H


def forge_forward(self, x, sigma, uncond, cond, cond_scale, s_min_uncond, image_cond):
    # mirrors modules/sd_samplers_cfg_denoiser.py @ dfdcbab :156-228 (no refiner, no classic DDIM eps)
    from backend.sampling.sampling_function import sampling_function
    from modules import prompt_parser, sd_samplers_common, shared
    from modules.script_callbacks import (
        AfterCFGCallbackParams,
        CFGDenoiserParams,
        cfg_after_cfg_callback,
        cfg_denoiser_callback,
    )
    from modules.shared import state

    if state.interrupted or state.skipped:
        raise sd_samplers_common.InterruptedException

    cond_composition, cond = prompt_parser.reconstruct_multicond_batch(cond, self.step)
    uncond = prompt_parser.reconstruct_cond_batch(uncond, self.step) if uncond is not None else None

    if self.mask is not None:  # noise_scaling(sigma, randn_like, init_latent); the noise seeded per step here
        noise = torch.randn(x.shape, generator=torch.Generator().manual_seed(self.step)).to(x)
        x = x * self.nmask + (self.init_latent + sigma[:, None, None, None] * noise) * self.mask

    denoiser_params = CFGDenoiserParams(x, image_cond, sigma, state.sampling_step, state.sampling_steps, cond,
                                        uncond, self)
    cfg_denoiser_callback(denoiser_params)

    if self.p.is_hr_pass:
        cond_scale = self.p.hr_cfg

    if shared.opts.skip_early_cond > 0 and self.step / self.total_steps <= shared.opts.skip_early_cond:
        cond_scale = 1.0
        self.p.extra_generation_params["Skip Early CFG"] = shared.opts.skip_early_cond
    elif (self.step % 2 or shared.opts.s_min_uncond_all) and s_min_uncond > 0 and sigma[0] < s_min_uncond:
        cond_scale = 1.0
        self.p.extra_generation_params["NGMS"] = s_min_uncond

    denoised, cond_pred, uncond_pred = sampling_function(self, denoiser_params=denoiser_params,
                                                         cond_scale=cond_scale, cond_composition=cond_composition)

    if self.mask is not None:
        denoised = denoised * self.nmask + self.init_latent * self.mask

    preview = self.sampler.last_latent = denoised
    sd_samplers_common.store_latent(preview)

    after_cfg_callback_params = AfterCFGCallbackParams(denoised, state.sampling_step, state.sampling_steps)
    cfg_after_cfg_callback(after_cfg_callback_params)
    denoised = after_cfg_callback_params.x

    self.step += 1
    return denoised


class ForgeObjects:
    # mirrors backend/diffusion_engine/base.py ForgeObjects (the unet field) and shallow_copy
    def __init__(self, unet):
        self.unet = unet

    def shallow_copy(self):
        return ForgeObjects(self.unet)


def forge_model(unet):
    """``p.sd_model`` as Forge loads an SD1.5 checkpoint: ``forge_objects.unet`` is a patcher whose KModel
    runs ``unet`` (the real ldm U-Net, its transformer blocks given Forge's patch dispatch; a diffusion
    transformer as it is)."""
    from backend.modules.k_model import KModel
    from backend.nn.unet import install_patch_dispatch
    from backend.patcher.unet import UnetPatcher

    from scfg_ext import testbed

    if hasattr(unet, "input_blocks"):
        install_patch_dispatch(unet)
    model = H.sd_model(unet)
    model.text_processing_engine = model.cond_stage_model  # stands in for ClassicTextProcessingEngine (same interface)
    model.forge_objects_after_applying_lora = ForgeObjects(UnetPatcher(KModel(testbed.k_denoiser(unet))))
    model.forge_objects = model.forge_objects_after_applying_lora.shallow_copy()
    return model


@contextlib.contextmanager
def forge_webui(extra_scripts=()):
    """The stand-in WebUI turned into Forge for the duration (our script loaded with Forge detected)."""
    stand_in = str(H.STAND_IN)
    if stand_in not in sys.path:
        sys.path.insert(0, stand_in)
    from modules import scripts, sd_samplers_cfg_denoiser

    from scfg_ext.webui import host

    runner_cls, denoiser_cls = scripts.ScriptRunner, sd_samplers_cfg_denoiser.CFGDenoiser
    saved = runner_cls.process_before_every_sampling, denoiser_cls.forward, host.IS_FORGE
    before_every_sampling = saved[0]

    def process_before_every_sampling(self, p, **kwargs):
        p.sd_model.forge_objects = p.sd_model.forge_objects_after_applying_lora.shallow_copy()
        return before_every_sampling(self, p, **kwargs)

    runner_cls.process_before_every_sampling = process_before_every_sampling
    denoiser_cls.forward = forge_forward
    host.IS_FORGE = True
    try:
        yield H.load_webui(extra_scripts)
    finally:
        runner_cls.process_before_every_sampling, denoiser_cls.forward, host.IS_FORGE = saved



def generate(*args, **kwargs):
    """``webui_harness.generate`` under inference mode, as Forge's ``process_images_inner`` runs."""
    with torch.inference_mode():
        return H.generate(*args, forge=True, **kwargs)
