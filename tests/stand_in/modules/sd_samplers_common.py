"""Stand-in for modules/sd_samplers_common.py @ A1111 v1.10.1 (82a973c).

Kept: SamplerData (total_steps doubles for second-order samplers), InterruptedException,
apply_refiner (only its "no refiner" paths), store_latent (state.current_latent only),
Sampler (constructor fields, callback_state, launch_sampling, initialize trimmed to the
CFGDenoiser fields + s_min_uncond, add_infotext).
Trimmed: VAE decoding/live previews, the torchsde/k-diffusion torch hijacks, noise samplers,
the actual refiner model switch (raises NotImplementedError if one would happen).
"""

from collections import namedtuple

import torch

from modules import shared
from modules.shared import opts, state

SamplerDataTuple = namedtuple("SamplerData", ["name", "constructor", "aliases", "options"])


# mirrors modules/sd_samplers_common.py @ v1.10.1 (82a973c): SamplerData.total_steps
class SamplerData(SamplerDataTuple):
    def total_steps(self, steps):
        if self.options.get("second_order", False):
            steps = steps * 2

        return steps


# mirrors modules/sd_samplers_common.py @ v1.10.1 (82a973c): setup_img2img_steps(p, steps=None) -> (steps, t_enc)
def setup_img2img_steps(p, steps=None):
    if opts.img2img_fix_steps or steps is not None:
        requested_steps = steps or p.steps
        steps = int(requested_steps / min(p.denoising_strength, 0.999)) if p.denoising_strength > 0 else 0
        t_enc = requested_steps - 1
    else:
        steps = p.steps
        t_enc = int(min(p.denoising_strength, 0.999) * steps)

    return steps, t_enc


# mirrors modules/sd_samplers_common.py @ v1.10.1 (82a973c): store_latent (live-preview decoding trimmed)
def store_latent(decoded):
    state.current_latent = decoded


# mirrors modules/sd_samplers_common.py @ v1.10.1 (82a973c): InterruptedException (a BaseException!)
class InterruptedException(BaseException):
    pass


# mirrors modules/sd_samplers_common.py @ v1.10.1 (82a973c): apply_refiner(cfg_denoiser, sigma=None) -> bool
def apply_refiner(cfg_denoiser, sigma=None):
    if opts.refiner_switch_by_sample_steps or sigma is None:
        completed_ratio = cfg_denoiser.step / cfg_denoiser.total_steps
        cfg_denoiser.p.extra_generation_params["Refiner switch by sampling steps"] = True

    else:
        # torch.max(sigma) only to handle rare case where we might have different sigmas in the same batch
        try:
            timestep = torch.argmin(torch.abs(cfg_denoiser.inner_model.sigmas.to(sigma.device) - torch.max(sigma)))
        except AttributeError:  # for samplers that don't use sigmas (DDIM) sigma is actually the timestep
            timestep = torch.max(sigma).to(dtype=int)
        completed_ratio = (999 - timestep) / 1000

    refiner_switch_at = cfg_denoiser.p.refiner_switch_at
    refiner_checkpoint_info = cfg_denoiser.p.refiner_checkpoint_info

    if refiner_switch_at is not None and completed_ratio < refiner_switch_at:
        return False

    if refiner_checkpoint_info is None or shared.sd_model.sd_checkpoint_info == refiner_checkpoint_info:
        return False

    raise NotImplementedError("stand-in: switching to a refiner checkpoint is not modelled")


# mirrors modules/sd_samplers_common.py @ v1.10.1 (82a973c): class Sampler (slice)
class Sampler:
    def __init__(self, funcname):
        self.funcname = funcname
        self.func = funcname
        self.extra_params = []
        self.sampler_noises = None
        self.stop_at = None
        self.eta = None
        self.config: SamplerData = None  # set by the function calling the constructor
        self.last_latent = None
        self.s_min_uncond = None
        self.s_churn = 0.0
        self.s_tmin = 0.0
        self.s_tmax = float("inf")
        self.s_noise = 1.0

        self.eta_option_field = "eta_ancestral"
        self.eta_infotext_field = "Eta"
        self.eta_default = 1.0

        self.conditioning_key = getattr(shared.sd_model.model, "conditioning_key", "crossattn")

        self.p = None
        self.model_wrap_cfg = None
        self.sampler_extra_args = None
        self.options = {}

    def callback_state(self, d):
        step = d["i"]

        if self.stop_at is not None and step > self.stop_at:
            raise InterruptedException

        state.sampling_step = step
        shared.total_tqdm.update()

    def launch_sampling(self, steps, func):
        self.model_wrap_cfg.steps = steps
        self.model_wrap_cfg.total_steps = self.config.total_steps(steps)
        state.sampling_steps = steps
        state.sampling_step = 0

        try:
            return func()
        except RecursionError:
            print(
                "Encountered RecursionError during sampling, returning last latent. "
                "rho >5 with a polyexponential scheduler may cause this error. "
                "You should try to use a smaller rho value instead."
            )
            return self.last_latent
        except InterruptedException:
            return self.last_latent

    def number_of_needed_noises(self, p):
        return p.steps

    # trimmed: eta / s_churn... extra params, TorchHijack
    def initialize(self, p) -> dict:
        self.p = p
        self.model_wrap_cfg.p = p
        self.model_wrap_cfg.mask = p.mask if hasattr(p, "mask") else None
        self.model_wrap_cfg.nmask = p.nmask if hasattr(p, "nmask") else None
        self.model_wrap_cfg.step = 0
        self.model_wrap_cfg.image_cfg_scale = getattr(p, "image_cfg_scale", None)
        self.eta = p.eta if p.eta is not None else getattr(opts, self.eta_option_field, 0.0)
        self.s_min_uncond = getattr(p, "s_min_uncond", 0.0)

        return {}

    def sample(self, p, x, conditioning, unconditional_conditioning, steps=None, image_conditioning=None):
        raise NotImplementedError()

    def sample_img2img(
        self, p, x, noise, conditioning, unconditional_conditioning, steps=None, image_conditioning=None
    ):
        raise NotImplementedError()

    def add_infotext(self, p):
        if self.model_wrap_cfg.padded_cond_uncond:
            p.extra_generation_params["Pad conds"] = True

        if self.model_wrap_cfg.padded_cond_uncond_v0:
            p.extra_generation_params["Pad conds v0"] = True
