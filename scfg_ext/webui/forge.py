"""Forge adapter (Forge 2, Forge Classic, Forge Neo, reForge): S-CFG rides on a clone of Forge's U-Net patcher.

Forge never calls ``combine_denoised``: ``sampling_function`` runs the U-Net through ``calc_cond_uncond_batch``
(``backend/sampling/sampling_function.py``), one call per batch of chunks, each chunk all images' rows of one
entry: the uncond, or one ``AND`` sub-prompt. ``transformer_options["cond_or_uncond"]`` names the chunks (1 =
uncond, 0 = cond); batched, the uncond comes first, then the sub-prompts from the last to the first (the batch
list is reversed before it is cut to fit memory, so split calls keep that order); under memory pressure the chunks
go into separate calls; a prompt whose length can't be batched with the negative's runs first; at CFG 1 the uncond
is not run.

Per pass, a U-Net function wrapper on a clone of ``forge_objects.unet`` (dropped with the clone: Forge
resets ``forge_objects`` before every pass) declares each call's row roles to the capture and, once the
step's uncond output is in hand, replaces each cond chunk's output by ``uncond + rate * (cond - uncond)``
before Forge merges the sub-prompts and applies its own CFG arithmetic. So every sub-prompt keeps its own
regions and rate, and a CFG function (Dynamic Thresholding) or post-CFG function (SAG, PAG) acts on top.
Calls after the step's cond chunks (SAG's and PAG's extra U-Net calls) are left alone.

Forge Neo's diffusion transformers run through the same ``sampling_function`` and wrapper. Anima's (blocks with a
self- and a cross-attention, ``backend/nn/anima.py``) is served: its 512-token contexts batch like SD's, uncond
first; its latents are 5-D ``(B, C, 1, H, W)`` (one frame). NextDiT's (Lumina 2, Z-Image: one joint attention
over text and image, ``backend/nn/lumina.py``) is served: its free-length texts rarely batch, so the prompt
usually runs before the negative prompt and is corrected after Forge's CFG (``_correct``). Chroma's (an MMDiT:
Flux's double- and single-stream blocks, one joint attention each, ``backend/nn/chroma.py``) is served the same
way, and Qwen-Image's (its own attention module, ``backend/nn/qwen.py``). The other families get a notice
naming them.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch

from ..capture import Cond, Uncond, find_attention_layers, find_dit_layers, find_joint_layers
from .session import Pass

COND, UNCOND = 0, 1  # Forge's cond_or_uncond values

# Forge Neo's diffusion transformers S-CFG does not serve (yet), by their class in backend/nn/
UNSERVED_DITS = {
    "NunchakuQwenImageTransformer2DModel": "Qwen-Image with Nunchaku (its quantized kernels are not verified)",
    "WanModel": "Wan (video)",
}
# flux.py's class runs Flux.1 dev (guidance-distilled: a guidance embedding, CFG 1), and also Flux.2 Klein (its base
# models take real CFG; the distilled ones and Flux.1 schnell run at CFG 1) without that embedding
DISTILLED_DITS = {"IntegratedFluxTransformer2DModel": "Flux.1 dev",
                  "SVDQFluxTransformer2DModel": "Flux.1 dev (Nunchaku)"}
UNEMBEDDED_FLUX = "Flux.2 Klein or Flux.1 schnell"
SERVED_DITS = "Anima, Lumina 2, Z-Image, Chroma, Qwen-Image"


@dataclass
class Step:
    """The main U-Net calls of one denoiser step."""

    conds_expected: int  # cond chunks Forge will run: the fewest AND sub-prompts of any image (zip)
    contexts: list = field(default_factory=list)  # sub-prompt j -> image 0's context at this step (to tell chunks)
    conds_seen: int = 0
    seen: set = field(default_factory=set)  # the sub-prompts whose chunk has run
    uncond: Any = None  # (B, C, H, W) once the uncond chunk has run
    early: dict = field(default_factory=dict)  # Cond -> its output, for cond chunks that ran before the uncond
    correction: dict = field(default_factory=dict)  # Cond -> guided - output of those, for the post-CFG function


class Backend:
    repeat_context = True  # backend/sampling/condition.py: conds of other lengths repeated to their LCM

    def __init__(self):
        self.steps: dict[int, Step] = {}  # id(Pass) -> its step in progress

    def unsupported_reason(self, sd_model) -> str | None:
        family = type(sd_model).__name__
        patcher = getattr(getattr(sd_model, "forge_objects", None), "unet", None)
        unet = getattr(getattr(patcher, "model", None), "diffusion_model", None)
        net = type(unet).__name__
        if net in DISTILLED_DITS and not getattr(unet, "guidance_embed", True):
            return f"S-CFG does not serve {UNEMBEDDED_FLUX} yet (it serves SD1, SD2, SDXL, {SERVED_DITS})"
        if net in DISTILLED_DITS:
            return (f"{DISTILLED_DITS[net]} is guidance-distilled: it runs at CFG 1 with no negative prompt, so "
                    "there is no guidance to make semantic-aware")
        if net in UNSERVED_DITS:
            return f"S-CFG does not serve {UNSERVED_DITS[net]} yet (it serves SD1, SD2, SDXL, {SERVED_DITS})"
        if unet is None or not hasattr(patcher, "clone"):
            return f"{family} has no U-Net with cross-attention"
        if not hasattr(unet, "input_blocks"):
            if find_dit_layers(unet) or find_joint_layers(unet):
                return None
            return f"{family} has no U-Net with cross-attention"
        if not find_attention_layers(unet):
            return f"{family}'s U-Net has no attention at latent/4 or latent/8"
        return None

    def unet(self, p):
        return p.sd_model.forge_objects.unet.model.diffusion_model

    def pass_notice(self, p, settings) -> str | None:
        if getattr(p, "is_hr_pass", False) and float(getattr(p, "hr_cfg", 0.0)) == 1.0:
            return ("the hires. fix pass runs at Hires CFG Scale 1 (the default of Forge's API: hr_cfg), which "
                    "computes no negative prompt: that pass used plain CFG")
        return None

    def install(self, p, current: Pass) -> None:
        hires = getattr(p, "is_hr_pass", False)
        cond_scale = float(getattr(p, "hr_cfg", p.cfg_scale) if hires else p.cfg_scale)  # Classic: no hr_cfg
        patcher = p.sd_model.forge_objects.unet.clone()
        inner = patcher.model_options.get("model_function_wrapper")  # another extension's, on this clone

        def wrapper(apply_model, args):
            return self._call(current, inner, cond_scale, apply_model, args)

        patcher.set_model_unet_function_wrapper(wrapper)
        patcher.set_model_sampler_post_cfg_function(lambda args: self._correct(current, cond_scale, args))
        p.sd_model.forge_objects.unet = patcher
        current.stack.callback(self.steps.pop, id(current), None)

    def plan(self, current: Pass, params) -> list:
        previous = self.steps.get(id(current))
        if previous is not None and current.run.active and previous.conds_seen == 0:
            current.run.warn_once("another extension replaced S-CFG's U-Net function wrapper (Forge allows one; "
                                  "MultiDiffusion and Radial attention use it): S-CFG was not applied")
        batch = current.denoiser.sampler.sampler_extra_args["cond"].batch  # MulticondLearnedConditioning
        step = self.steps[id(current)] = Step(min(len(prompts) for prompts in batch))
        # reconstruct_multicond_batch numbers the rows image by image: image 0's sub-prompt j is row j
        text = getattr(params, "text_cond", None)
        text = text.get("crossattn") if isinstance(text, dict) else text
        if isinstance(text, torch.Tensor) and text.dim() == 3 and len(text) >= step.conds_expected:
            step.contexts = list(text[: step.conds_expected])
        return []  # the roles are declared per U-Net call, from cond_or_uncond

    @staticmethod
    def _subprompt(step: Step, context) -> int:
        """Which sub-prompt a cond chunk is, from its first row's context (Forge tiles a shorter one to the
        batch's length); else by order: Forge runs a batch's chunks reversed (``to_batch_temp.reverse()``),
        sub-prompt n-1 first, which holds whenever all of them batch together."""
        if isinstance(context, torch.Tensor):
            for j, ref in enumerate(step.contexts):
                if j not in step.seen and len(context) >= len(ref) and torch.equal(context[: len(ref)], ref):
                    return j
        return step.conds_expected - 1 - step.conds_seen

    def _call(self, current: Pass, inner, cond_scale, apply_model, args):
        def run_unet():
            if inner is not None:
                return inner(apply_model, args)
            return apply_model(args["input"], args["timestep"], **args["c"])

        run, step = current.run, self.steps.get(id(current))
        if step is None or not run.active:
            return run_unet()  # S-CFG off this step, or this pass is over
        chunks = list(args["cond_or_uncond"])
        if step.conds_seen >= step.conds_expected and not (UNCOND in chunks and step.early and step.uncond is None):
            return run_unet()  # an extra call after the step's CFG (SAG, PAG)
        b = args["input"].shape[0] // len(chunks)
        contexts = args["c"].get("c_crossattn")
        roles, cond_chunks = [], []
        for k, kind in enumerate(chunks):
            if kind == UNCOND:
                roles += [Uncond(i) for i in range(b)]
            else:
                j = self._subprompt(step, contexts[k * b] if isinstance(contexts, torch.Tensor) else None)
                step.seen.add(j)
                cond_chunks.append((k, j))
                roles += [Cond(i, j) for i in range(b)]
                step.conds_seen += 1
        run.capture.plan_call(roles)
        out = run_unet()
        conds = {Cond(i, j): out[k * b + i] for k, j in cond_chunks for i in range(b)}
        if UNCOND in chunks:
            step.uncond = out[chunks.index(UNCOND) * b:][:b]
            if step.early:  # the cond chunks that ran first are corrected after Forge's CFG (_correct)
                early = self._guided(run, step, step.early, cond_scale)
                step.correction = {key: early[key] - step.early[key] for key in early}
        if not conds:
            return out
        if step.uncond is None:  # no uncond this step (CFG 1, NGMS, Skip Early CFG), or it comes later
            step.early.update(conds)
            return out
        guided = self._guided(run, step, conds, cond_scale)
        if not guided:
            return out
        out = out.clone()
        for k, j in cond_chunks:
            for i in range(b):
                if Cond(i, j) in guided:
                    out[k * b + i] = guided[Cond(i, j)]
        return out

    @staticmethod
    def _guided(run, step: Step, conds: dict, cond_scale: float) -> dict:
        try:
            return run.guided_conds(step.uncond, conds, cond_scale)
        except Exception as e:  # noqa: BLE001 - never break the generation
            run.warn_once(f"S-CFG failed on a step ({type(e).__name__}: {e}); that step used plain CFG")
            return {}

    def _correct(self, current: Pass, cond_scale: float, args):
        """Post-CFG: the step's cond chunks that ran before the uncond (a prompt and negative prompt whose
        lengths Forge can't batch: usual on DiTs with free-length text) could not be replaced in time; add what
        replacing them would have changed: Forge's CFG ``u + s * sum_j w_j (c_j - u)`` (``sampling_function_inner``)
        is linear in each sub-prompt's output ``c_j``, so the change is ``s * sum_j w_j (guided_j - c_j)``."""
        step = self.steps.get(id(current))
        denoised = args["denoised"]
        if step is None or not step.correction:
            return denoised
        weights = [float(c.get("strength", 1.0)) for c in args["cond"]]
        denoised = denoised.clone()
        for key, change in step.correction.items():
            denoised[key.image] += cond_scale * weights[key.index] * change
        step.correction = {}
        return denoised
