"""Stand-in for modules/sd_samplers_kdiffusion.py @ A1111 v1.10.1 (82a973c).

Kept: CFGDenoiserKDiffusion (lazy inner_model = k_diffusion CompVis(V)Denoiser over
shared.sd_model, or sd_model.create_denoiser()), KDiffusionSampler constructor
(model_wrap_cfg / model_wrap), sample() and sample_img2img() driving the real k-diffusion
sampler function with the upstream extra_args.
Trimmed: schedulers (sigmas = p.sampler_noise_scheduler_override(steps) if set, else
model_wrap.get_sigmas(steps), i.e. the "no scheduler" branch of get_sigmas), brownian noise
samplers, SGM noise multiplier, extra noise callback, eta/s_churn options.
k_diffusion is imported lazily (importing it pulls many packages).
"""

import inspect

import modules.shared as shared
from modules import sd_samplers_cfg_denoiser, sd_samplers_common
from modules.sd_samplers_cfg_denoiser import CFGDenoiser  # noqa: F401


def _k_diffusion():
    import k_diffusion.external
    import k_diffusion.sampling

    return k_diffusion


# mirrors modules/sd_samplers_kdiffusion.py @ v1.10.1 (82a973c): the samplers table (subset),
#   label/funcname/aliases/options
samplers_k_diffusion = [
    ("DPM++ 2M", "sample_dpmpp_2m", ["k_dpmpp_2m"], {"scheduler": "karras"}),
    ("Euler a", "sample_euler_ancestral", ["k_euler_a", "k_euler_ancestral"], {"uses_ensd": True}),
    ("Euler", "sample_euler", ["k_euler"], {}),
    ("LMS", "sample_lms", ["k_lms"], {}),
    ("Heun", "sample_heun", ["k_heun"], {"second_order": True}),
    (
        "DPM2",
        "sample_dpm_2",
        ["k_dpm_2"],
        {"scheduler": "karras", "discard_next_to_last_sigma": True, "second_order": True},
    ),
]

samplers_data_k_diffusion = [
    sd_samplers_common.SamplerData(
        label, lambda model, funcname=funcname: KDiffusionSampler(funcname, model), aliases, options
    )
    for label, funcname, aliases, options in samplers_k_diffusion
]


# mirrors modules/sd_samplers_kdiffusion.py @ v1.10.1 (82a973c): CFGDenoiserKDiffusion
class CFGDenoiserKDiffusion(sd_samplers_cfg_denoiser.CFGDenoiser):
    @property
    def inner_model(self):
        if self.model_wrap is None:
            denoiser_constructor = getattr(shared.sd_model, "create_denoiser", None)

            if denoiser_constructor is not None:
                self.model_wrap = denoiser_constructor()
            else:
                k_diffusion = _k_diffusion()
                denoiser = (
                    k_diffusion.external.CompVisVDenoiser
                    if shared.sd_model.parameterization == "v"
                    else k_diffusion.external.CompVisDenoiser
                )
                self.model_wrap = denoiser(shared.sd_model, quantize=shared.opts.enable_quantization)

        return self.model_wrap


# mirrors modules/sd_samplers_kdiffusion.py @ v1.10.1 (82a973c): KDiffusionSampler (slice)
class KDiffusionSampler(sd_samplers_common.Sampler):
    def __init__(self, funcname, sd_model, options=None):
        super().__init__(funcname)

        self.extra_params = []
        self.options = options or {}
        self.func = funcname if callable(funcname) else getattr(_k_diffusion().sampling, self.funcname)

        self.model_wrap_cfg = CFGDenoiserKDiffusion(self)
        self.model_wrap = self.model_wrap_cfg.inner_model

    def get_sigmas(self, p, steps):
        discard_next_to_last_sigma = self.config is not None and self.config.options.get(
            "discard_next_to_last_sigma", False
        )
        steps += 1 if discard_next_to_last_sigma else 0

        if p.sampler_noise_scheduler_override:
            sigmas = p.sampler_noise_scheduler_override(steps)
        else:
            sigmas = self.model_wrap.get_sigmas(steps)

        if discard_next_to_last_sigma:
            import torch

            sigmas = torch.cat([sigmas[:-2], sigmas[-1:]])

        return sigmas.cpu()

    def sample_img2img(
        self, p, x, noise, conditioning, unconditional_conditioning, steps=None, image_conditioning=None
    ):
        steps, t_enc = sd_samplers_common.setup_img2img_steps(p, steps)

        sigmas = self.get_sigmas(p, steps)
        sigma_sched = sigmas[steps - t_enc - 1 :]

        xi = x + noise * sigma_sched[0]

        extra_params_kwargs = self.initialize(p)
        parameters = inspect.signature(self.func).parameters

        if "sigmas" in parameters:
            extra_params_kwargs["sigmas"] = sigma_sched

        self.model_wrap_cfg.init_latent = x
        self.last_latent = x
        self.sampler_extra_args = {
            "cond": conditioning,
            "image_cond": image_conditioning,
            "uncond": unconditional_conditioning,
            "cond_scale": p.cfg_scale,
            "s_min_uncond": self.s_min_uncond,
        }

        samples = self.launch_sampling(
            t_enc + 1,
            lambda: self.func(
                self.model_wrap_cfg,
                xi,
                extra_args=self.sampler_extra_args,
                disable=False,
                callback=self.callback_state,
                **extra_params_kwargs,
            ),
        )

        self.add_infotext(p)

        return samples

    def sample(self, p, x, conditioning, unconditional_conditioning, steps=None, image_conditioning=None):
        steps = steps or p.steps

        sigmas = self.get_sigmas(p, steps)

        x = x * sigmas[0]

        extra_params_kwargs = self.initialize(p)
        parameters = inspect.signature(self.func).parameters

        if "n" in parameters:
            extra_params_kwargs["n"] = steps

        if "sigma_min" in parameters:
            extra_params_kwargs["sigma_min"] = self.model_wrap.sigmas[0].item()
            extra_params_kwargs["sigma_max"] = self.model_wrap.sigmas[-1].item()

        if "sigmas" in parameters:
            extra_params_kwargs["sigmas"] = sigmas

        self.last_latent = x
        self.sampler_extra_args = {
            "cond": conditioning,
            "image_cond": image_conditioning,
            "uncond": unconditional_conditioning,
            "cond_scale": p.cfg_scale,
            "s_min_uncond": self.s_min_uncond,
        }

        samples = self.launch_sampling(
            steps,
            lambda: self.func(
                self.model_wrap_cfg,
                x,
                extra_args=self.sampler_extra_args,
                disable=False,
                callback=self.callback_state,
                **extra_params_kwargs,
            ),
        )

        self.add_infotext(p)

        return samples
