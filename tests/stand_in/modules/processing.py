"""Stand-in for modules/processing.py @ A1111 v1.10.1 (82a973c).

Kept: StableDiffusionProcessing / ...Txt2Img / ...Img2Img as attribute holders with the
upstream field names and defaults (plus the scripts/script_args setters that run
Script.setup once, fill_fields_from_opts, sd_model -> shared.sd_model), the sampling part of
txt2img/img2img `sample()` (create sampler -> process_before_every_sampling(p=, x=, noise=,
c=, uc=) -> sampler.sample[_img2img]) and create_infotext's rendering of
extra_generation_params (lists indexed, callables called with **locals(), None dropped,
infotext_utils.quote on values).
Trimmed: everything that needs a real model (conds, decoding, hires pass, saving, images,
extra networks, override settings), Processed.
"""

from __future__ import annotations

import modules.shared as shared
from modules import errors, infotext_utils, sd_samplers
from modules.shared import opts, state


# mirrors modules/processing.py @ v1.10.1 (82a973c): class StableDiffusionProcessing (fields; methods trimmed)
class StableDiffusionProcessing:
    outpath_samples: str = None
    outpath_grids: str = None
    prompt: str = ""
    prompt_for_display: str = None
    negative_prompt: str = ""
    styles: list = None
    seed: int = -1
    subseed: int = -1
    subseed_strength: float = 0
    seed_resize_from_h: int = -1
    seed_resize_from_w: int = -1
    seed_enable_extras: bool = True
    sampler_name: str = None
    scheduler: str = None
    batch_size: int = 1
    n_iter: int = 1
    steps: int = 50
    cfg_scale: float = 7.0
    width: int = 512
    height: int = 512
    restore_faces: bool = None
    tiling: bool = None
    do_not_save_samples: bool = False
    do_not_save_grid: bool = False
    extra_generation_params: dict = None
    overlay_images: list = None
    eta: float = None
    do_not_reload_embeddings: bool = False
    denoising_strength: float = None
    ddim_discretize: str = None
    s_min_uncond: float = None
    s_churn: float = None
    s_tmax: float = None
    s_tmin: float = None
    s_noise: float = None
    override_settings: dict = None
    override_settings_restore_afterwards: bool = True
    sampler_index: int = None
    refiner_checkpoint: str = None
    refiner_switch_at: float = None
    token_merging_ratio = 0
    token_merging_ratio_hr = 0
    disable_extra_networks: bool = False
    firstpass_image = None

    # init=False fields upstream
    sampler = None
    is_using_inpainting_conditioning: bool = False
    paste_to = None
    is_hr_pass: bool = False
    c = None
    uc = None
    rng = None
    step_multiplier: int = 1
    color_corrections: list = None
    all_prompts: list = None
    all_negative_prompts: list = None
    all_seeds: list = None
    all_subseeds: list = None
    iteration: int = 0
    main_prompt: str = None
    main_negative_prompt: str = None
    prompts: list = None
    negative_prompts: list = None
    seeds: list = None
    subseeds: list = None
    extra_network_data: dict = None
    user: str = None
    sd_model_name: str = None
    sd_model_hash: str = None
    sd_vae_name: str = None
    sd_vae_hash: str = None
    is_api: bool = False

    def __init__(self, **kwargs):
        # upstream: dataclass __init__ + __post_init__
        self.scripts_value = None
        self.script_args_value = None
        self.scripts_setup_complete = False
        for k, v in kwargs.items():
            if k in ("scripts", "script_args"):
                continue
            setattr(self, k, v)

        self.comments = {}

        if self.styles is None:
            self.styles = []

        self.sampler_noise_scheduler_override = None

        self.extra_generation_params = self.extra_generation_params or {}
        self.override_settings = self.override_settings or {}
        self.script_args = kwargs.get("script_args") or {}

        self.refiner_checkpoint_info = None

        if not self.seed_enable_extras:
            self.subseed = -1
            self.subseed_strength = 0
            self.seed_resize_from_h = 0
            self.seed_resize_from_w = 0

        if "scripts" in kwargs:
            self.scripts = kwargs["scripts"]

    # mirrors StableDiffusionProcessing.fill_fields_from_opts (called by process_images_inner ~898)
    def fill_fields_from_opts(self):
        self.s_min_uncond = self.s_min_uncond if self.s_min_uncond is not None else opts.s_min_uncond
        self.s_churn = self.s_churn if self.s_churn is not None else getattr(opts, "s_churn", 0.0)
        self.s_tmin = self.s_tmin if self.s_tmin is not None else getattr(opts, "s_tmin", 0.0)
        self.s_tmax = (self.s_tmax if self.s_tmax is not None else getattr(opts, "s_tmax", 0.0)) or float("inf")
        self.s_noise = self.s_noise if self.s_noise is not None else getattr(opts, "s_noise", 1.0)

    @property
    def sd_model(self):
        return shared.sd_model

    @sd_model.setter
    def sd_model(self, value):
        pass

    @property
    def scripts(self):
        return self.scripts_value

    @scripts.setter
    def scripts(self, value):
        self.scripts_value = value

        if self.scripts_value and self.script_args_value and not self.scripts_setup_complete:
            self.setup_scripts()

    @property
    def script_args(self):
        return self.script_args_value

    @script_args.setter
    def script_args(self, value):
        self.script_args_value = value

        if self.scripts_value and self.script_args_value and not self.scripts_setup_complete:
            self.setup_scripts()

    def setup_scripts(self):
        self.scripts_setup_complete = True

        self.scripts.setup_scrips(self, is_ui=not self.is_api)

    # mirrors modules/processing.py @ v1.10.1 (82a973c) :511-513
    def save_samples(self) -> bool:
        """Returns whether generated images need to be written to disk"""
        return opts.samples_save and not self.do_not_save_samples and (
            opts.save_incomplete_images or not state.interrupted and not state.skipped)

    def comment(self, text):
        self.comments[text] = 1

    def get_token_merging_ratio(self, for_hr=False):
        return self.token_merging_ratio or opts.token_merging_ratio


# mirrors modules/processing.py @ v1.10.1 (82a973c): StableDiffusionProcessingTxt2Img (fields + sample() without
#   hires/firstpass)
class StableDiffusionProcessingTxt2Img(StableDiffusionProcessing):
    enable_hr: bool = False
    denoising_strength: float = 0.75
    hr_scale: float = 2.0
    hr_upscaler: str = None
    hr_second_pass_steps: int = 0
    hr_resize_x: int = 0
    hr_resize_y: int = 0
    hr_checkpoint_name: str = None
    hr_sampler_name: str = None
    hr_scheduler: str = None
    hr_prompt: str = ""
    hr_negative_prompt: str = ""
    force_task_id: str = None
    hr_c = None
    hr_uc = None

    def txt2img_image_conditioning(self, x, width=None, height=None):
        # upstream: zeros of shape (B, 5, 1, 1) for non-inpainting models (the 'crossattn' case)
        return x.new_zeros(x.shape[0], 5, 1, 1, dtype=x.dtype, device=x.device)

    # processing.py ~1307-1349, normal (no firstpass_image, no enable_hr) path
    def sample(self, conditioning, unconditional_conditioning, seeds, subseeds, subseed_strength, prompts):
        self.sampler = sd_samplers.create_sampler(self.sampler_name, self.sd_model)

        x = self.rng.next()
        if self.scripts is not None:
            self.scripts.process_before_every_sampling(
                p=self, x=x, noise=x, c=conditioning, uc=unconditional_conditioning
            )

        samples = self.sampler.sample(
            self, x, conditioning, unconditional_conditioning, image_conditioning=self.txt2img_image_conditioning(x)
        )
        del x

        return samples


# mirrors modules/processing.py @ v1.10.1 (82a973c): StableDiffusionProcessingImg2Img (fields + sample())
class StableDiffusionProcessingImg2Img(StableDiffusionProcessing):
    init_images: list = None
    resize_mode: int = 0
    denoising_strength: float = 0.75
    image_cfg_scale: float = None
    mask = None
    mask_blur_x: int = 4
    mask_blur_y: int = 4
    mask_blur: int = None
    mask_round: bool = True
    inpainting_fill: int = 0
    inpaint_full_res: bool = True
    inpaint_full_res_padding: int = 0
    inpainting_mask_invert: int = 0
    initial_noise_multiplier: float = None
    latent_mask = None
    force_task_id: str = None
    image_mask = None
    nmask = None
    init_latent = None
    image_conditioning = None

    # mirrors StableDiffusionProcessingImg2Img.__post_init__ (processing.py ~1583-1588)
    def __init__(self, **kwargs):
        super().__init__(**kwargs)

        self.image_mask = self.mask
        self.mask = None
        self.initial_noise_multiplier = (
            opts.initial_noise_multiplier if self.initial_noise_multiplier is None else self.initial_noise_multiplier
        )

    # processing.py ~1759-1789 (mask blend after sampling kept)
    def sample(self, conditioning, unconditional_conditioning, seeds, subseeds, subseed_strength, prompts):
        from modules import scripts

        x = self.rng.next()

        if self.initial_noise_multiplier != 1.0:
            self.extra_generation_params["Noise multiplier"] = self.initial_noise_multiplier
            x *= self.initial_noise_multiplier

        if self.scripts is not None:
            self.scripts.process_before_every_sampling(
                p=self, x=self.init_latent, noise=x, c=conditioning, uc=unconditional_conditioning
            )
        samples = self.sampler.sample_img2img(
            self,
            self.init_latent,
            x,
            conditioning,
            unconditional_conditioning,
            image_conditioning=self.image_conditioning,
        )

        if self.mask is not None:
            blended_samples = samples * self.nmask + self.init_latent * self.mask

            if self.scripts is not None:
                mba = scripts.MaskBlendArgs(samples, self.nmask, self.init_latent, self.mask, blended_samples)
                self.scripts.on_mask_blend(self, mba)
                blended_samples = mba.blended_latent

            samples = blended_samples

        del x

        return samples


# mirrors modules/processing.py @ v1.10.1 (82a973c): create_infotext (same signature; the built-in fields
# are reduced to Steps/Sampler/Schedule type/CFG scale/Image CFG scale/Seed/Size/Model hash/Model, then
# **p.extra_generation_params; rendering loop and quoting are upstream's)
def create_infotext(
    p,
    all_prompts,
    all_seeds,
    all_subseeds,
    comments=None,
    iteration=0,
    position_in_batch=0,
    use_main_prompt=False,
    index=None,
    all_negative_prompts=None,
):
    if use_main_prompt:
        index = 0
    elif index is None:
        index = position_in_batch + iteration * p.batch_size

    if all_negative_prompts is None:
        all_negative_prompts = p.all_negative_prompts

    prompt_text = p.main_prompt if use_main_prompt else all_prompts[index]
    negative_prompt = p.main_negative_prompt if use_main_prompt else all_negative_prompts[index]

    generation_params = {
        "Steps": p.steps,
        "Sampler": p.sampler_name,
        "Schedule type": p.scheduler,
        "CFG scale": p.cfg_scale,
        "Image CFG scale": getattr(p, "image_cfg_scale", None),
        "Seed": p.all_seeds[0] if use_main_prompt else all_seeds[index],
        "Size": f"{p.width}x{p.height}",
        "Model hash": p.sd_model_hash if opts.add_model_hash_to_info else None,
        "Model": p.sd_model_name if opts.add_model_name_to_info else None,
        "Denoising strength": p.extra_generation_params.get("Denoising strength"),
        **p.extra_generation_params,
        "User": p.user if getattr(opts, "add_user_name_to_info", False) else None,
    }

    for key, value in generation_params.items():
        try:
            if isinstance(value, list):
                generation_params[key] = value[index]
            elif callable(value):
                generation_params[key] = value(**locals())
        except Exception:
            errors.report(f'Error creating infotext for key "{key}"', exc_info=True)
            generation_params[key] = None

    generation_params_text = ", ".join(
        [k if k == v else f"{k}: {infotext_utils.quote(v)}" for k, v in generation_params.items() if v is not None]
    )

    negative_prompt_text = f"\nNegative prompt: {negative_prompt}" if negative_prompt else ""

    return f"{prompt_text}{negative_prompt_text}\n{generation_params_text}".strip()


# mirrors modules/processing.py @ v1.10.1 (82a973c) :516-599: class Processed (the fields scripts and the
# API read; trimmed: sampler/model/VAE/face-restoration/token-merging fields). Forge (dfdcbab :519-521) adds
# ``extra_images`` (= ``p.extra_result_images``): ``forge=True``.
class Processed:
    def __init__(self, p, images_list, seed=-1, info="", subseed=None, all_prompts=None, all_negative_prompts=None,
                 all_seeds=None, all_subseeds=None, index_of_first_image=0, infotexts=None, comments="",
                 extra_images_list=None, forge=False):
        self.images = images_list
        self.prompt = p.prompt
        self.negative_prompt = p.negative_prompt
        self.seed = seed
        self.subseed = subseed
        self.info = info
        self.comments = "".join(f"{comment}\n" for comment in p.comments)
        self.width = p.width
        self.height = p.height
        self.cfg_scale = p.cfg_scale
        self.steps = p.steps
        self.batch_size = p.batch_size
        self.extra_generation_params = p.extra_generation_params
        self.index_of_first_image = index_of_first_image
        self.all_prompts = all_prompts or p.all_prompts or [self.prompt]
        self.all_negative_prompts = all_negative_prompts or p.all_negative_prompts or [self.negative_prompt]
        self.all_seeds = all_seeds or p.all_seeds or [self.seed]
        self.all_subseeds = all_subseeds or p.all_subseeds or [self.subseed]
        self.infotexts = infotexts or [info] * len(images_list)
        if forge:
            self.extra_images = extra_images_list if extra_images_list is not None else []

    def js(self):
        import json

        obj = {
            "prompt": self.all_prompts[0],
            "all_prompts": self.all_prompts,
            "seed": self.seed,
            "all_seeds": self.all_seeds,
            "extra_generation_params": self.extra_generation_params,
            "index_of_first_image": self.index_of_first_image,
            "infotexts": self.infotexts,
        }
        return json.dumps(obj, default=lambda o: None)
