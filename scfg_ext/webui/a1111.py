"""AUTOMATIC1111 adapter: S-CFG substitutes the guided cond outputs inside ``CFGDenoiser.combine_denoised``.

A1111 1.10 (``modules/sd_samplers_cfg_denoiser.py``): the denoiser batches each image's cond rows (one per
``AND`` sub-prompt, in ``conds_list`` order), then one uncond row per image, and combines them in
``combine_denoised(x_out, conds_list, uncond, cond_scale)``. Per pass, an instance ``combine_denoised``
replaces each guided cond output by ``uncond + rate * (cond - uncond)`` and calls the combination that was
there before (the WebUI's, or another extension's): with a linear combiner this is exactly S-CFG, and other
CFG extensions keep working on top.
"""

from __future__ import annotations

from ..capture import Cond, Uncond, find_attention_layers
from .session import Pass, restore_attr


class Backend:
    repeat_context = False  # stack_conds pads a shorter cond with its last (padding) vector

    def unsupported_reason(self, sd_model) -> str | None:
        if getattr(sd_model, "is_sd3", False):
            return "SD3 has no U-Net cross-attention"
        if getattr(sd_model, "cond_stage_key", None) == "edit":
            return "instruct-pix2pix edit models combine three predictions"
        unet = getattr(getattr(sd_model, "model", None), "diffusion_model", None)
        if unet is None or not hasattr(unet, "input_blocks"):
            return "this model has no ldm/sgm U-Net"
        if not find_attention_layers(unet):
            return "this U-Net has no attention at latent/4 or latent/8"
        return None

    def unet(self, p):
        return p.sd_model.model.diffusion_model

    def pass_notice(self, p, settings) -> str | None:
        return None

    def install(self, p, current: Pass) -> None:
        denoiser = current.denoiser
        previous = denoiser.combine_denoised  # the class method, or an instance override of another extension
        had_instance_attr = "combine_denoised" in vars(denoiser)

        def combine_denoised(x_out, conds_list, uncond, cond_scale):
            return combine(current, previous, x_out, conds_list, uncond, cond_scale)

        denoiser.combine_denoised = combine_denoised
        current.stack.callback(restore_attr, denoiser, "combine_denoised", previous if had_instance_attr else None)

    def plan(self, current: Pass, params) -> list | None:
        """Roles of the rows of ``params.x`` as ``CFGDenoiser.forward`` lays them out: each image's cond rows
        (one per ``AND`` sub-prompt, in ``conds_list`` order), then one uncond row per image. None when the
        batch is not laid out that way (e.g. another extension changed it)."""
        batch = current.denoiser.sampler.sampler_extra_args["cond"].batch  # MulticondLearnedConditioning
        roles: list = [Cond(i, j) for i, prompts in enumerate(batch) for j in range(len(prompts))]
        text_cond = params.text_cond
        rows_cond = text_cond.shape[0] if hasattr(text_cond, "shape") else text_cond["crossattn"].shape[0]
        if rows_cond != len(roles) or params.x.shape[0] != len(roles) + len(batch):
            return None
        return roles + [Uncond(i) for i in range(len(batch))]


def combine(current: Pass, previous, x_out, conds_list, uncond, cond_scale):
    run = current.run
    if cond_scale == 1.0 or not run.active:
        # cond_scale 1.0: the WebUI skipped the uncond rows this step (NGMS / Skip Early CFG): stays plain
        run.skip_step()
        return previous(x_out, conds_list, uncond, cond_scale)
    try:
        uncond_out = x_out[-uncond.shape[0]:]
        conds = {Cond(i, j): x_out[index] for i, image in enumerate(conds_list) for j, (index, _) in enumerate(image)}
        guided = run.guided_conds(uncond_out, conds, cond_scale)
    except Exception as e:  # noqa: BLE001 - never break the generation
        run.warn_once(f"S-CFG failed on a step ({type(e).__name__}: {e}); that step used plain CFG")
        guided = {}
    run.skip_step()
    if not guided:
        return previous(x_out, conds_list, uncond, cond_scale)
    x_guided = x_out.clone()
    for key, value in guided.items():
        x_guided[conds_list[key.image][key.index][0]] = value
    return previous(x_guided, conds_list, uncond, cond_scale)
