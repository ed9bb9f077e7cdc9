"""AUTOMATIC1111 glue: per sampling pass, hook the U-Net and the CFG denoiser; undo everything after it.

Flow (A1111 1.10; ``modules/processing.py``, ``modules/sd_samplers_cfg_denoiser.py``):

* ``process`` (once per generation): resolve and validate the settings, check the model, write infotext.
* ``process_before_every_sampling`` (first pass, hires pass, img2img; the sampler about to run exists):
  attach the attention hooks, replace ``combine_denoised`` on this denoiser instance, and wrap this
  sampler's ``launch_sampling`` so that everything is undone when sampling ends: success, error or
  interrupt (``postprocess`` is not reached when sampling raises).
* ``on_cfg_denoiser`` (every denoiser call): plan which U-Net rows are whose (cond rows of each image's
  ``AND`` sub-prompts, then one uncond row per image) and the schedule progress.
* ``combine_denoised``: substitute each guided cond output by ``uncond + rate * (cond - uncond)`` and call
  the combination that was there before (the WebUI's, or another extension's): with a linear combiner this
  is exactly S-CFG, and other CFG extensions keep working on top.

With S-CFG disabled none of this is installed.
"""

from __future__ import annotations

import contextlib
import logging
from dataclasses import dataclass, field

import torch

from ..capture import Cond, Uncond, find_attention_layers
from ..guidance import ScfgRun
from ..settings import Settings, SettingsError
from . import infotext, xyz

log = logging.getLogger("sd-webui-scfg")


def resolve_settings(args, p) -> Settings:
    """The script args, with this X/Y/Z cell's values on top. Raises ``SettingsError``."""
    settings = Settings.from_args(args)
    over = xyz.overrides(p)
    if over:
        enabled = over.pop("enabled", settings.enabled or bool(over))  # any S-CFG axis implies S-CFG on
        settings = settings.replace(enabled=enabled, **over)
    return settings


def unsupported_reason(sd_model) -> str | None:
    """Why S-CFG can't serve this model, or None."""
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


@dataclass
class Pass:
    """One sampling pass with S-CFG installed."""

    run: ScfgRun
    denoiser: object
    unet: torch.nn.Module
    stack: contextlib.ExitStack = field(default_factory=contextlib.ExitStack)


class Glue:
    """The A1111 side of one WebUI process. ``notice(p, message)`` shows a message to the user."""

    def __init__(self, legacy: bool = False):
        self.current: Pass | None = None
        # A1111 1.6-1.9 have no process_before_every_sampling: the pass is then installed from the first
        # on_cfg_denoiser call of each sampler (before that step's U-Net calls and combination)
        self.legacy = legacy
        self.pending = None  # the p of the generation in progress, when S-CFG is on

    # -- script hooks -------------------------------------------------------------------------------------
    def process(self, p, args) -> Settings | None:
        self.stop()  # a pass left over from a run that crashed outside sampling
        self.pending = None
        p.scfg_settings = None
        # X/Y/Z plot cells are shallow copies of one p and share its extra_generation_params dict: never write
        # into it, and drop what an earlier cell wrote there, so a cell's infotext has S-CFG only if it used it
        params = p.extra_generation_params or {}
        if any(key in params for key in infotext.KEYS):
            p.extra_generation_params = {k: v for k, v in params.items() if k not in infotext.KEYS}
        try:
            settings = resolve_settings(args, p)
        except SettingsError as e:
            notice(p, f"{e}; S-CFG is off for this generation")
            return None
        if not settings.enabled:
            return None
        reason = unsupported_reason(p.sd_model)
        if reason:
            notice(p, f"S-CFG is off for this model: {reason}; using plain CFG")
            return None
        p.scfg_settings = settings
        p.extra_generation_params = {**(p.extra_generation_params or {}), **infotext.write(settings)}  # a copy
        self.pending = p
        return settings

    def before_sampling(self, p) -> bool:
        settings = getattr(p, "scfg_settings", None)
        self.stop()
        if settings is None:
            return False
        if getattr(p, "is_hr_pass", False) and not settings.hires:
            return False
        sampler = getattr(p, "sampler", None)
        denoiser = getattr(sampler, "model_wrap_cfg", None)
        if denoiser is None:
            notice(p, "S-CFG found no CFG denoiser on this sampler; using plain CFG")
            return False
        try:
            self.current = self._start(p, settings, sampler, denoiser)
        except Exception as e:  # noqa: BLE001 - never break the generation: step aside
            self.stop()
            notice(p, f"S-CFG could not start ({type(e).__name__}: {e}); using plain CFG")
            return False
        return True

    def finish(self) -> None:
        """End of the generation (``postprocess``, script unload)."""
        self.pending = None
        self.stop()

    def stop(self) -> None:
        """Undo everything of the current pass (idempotent)."""
        current, self.current = self.current, None
        if current is not None:
            current.stack.close()

    # -- install / uninstall --------------------------------------------------------------------------------
    def _start(self, p, settings, sampler, denoiser) -> Pass:
        unet = p.sd_model.model.diffusion_model
        run = ScfgRun(settings, warn=lambda message: notice(p, message))
        current = Pass(run, denoiser, unet)
        stack = current.stack
        stack.enter_context(run.attached(unet))

        previous = denoiser.combine_denoised  # the class method, or an instance override of another extension
        had_instance_attr = "combine_denoised" in vars(denoiser)

        def combine_denoised(x_out, conds_list, uncond, cond_scale):
            return self._combine(current, previous, x_out, conds_list, uncond, cond_scale)

        denoiser.combine_denoised = combine_denoised
        stack.callback(_restore, denoiser, "combine_denoised", previous if had_instance_attr else None)

        launch = sampler.launch_sampling
        had_launch_attr = "launch_sampling" in vars(sampler)

        def launch_sampling(steps, func):
            try:
                return launch(steps, func)
            finally:
                if self.current is current:
                    self.stop()

        sampler.launch_sampling = launch_sampling
        stack.callback(_restore, sampler, "launch_sampling", launch if had_launch_attr else None)
        return current

    # -- per step -----------------------------------------------------------------------------------------
    def on_cfg_denoiser(self, params) -> None:
        if self.legacy and self.pending is not None:
            p = self.pending
            denoiser = getattr(params, "denoiser", None) or getattr(getattr(p, "sampler", None), "model_wrap_cfg", None)
            if denoiser is not None and (self.current is None or self.current.denoiser is not denoiser):
                self.before_sampling(p)
        current = self.current
        if current is None:
            return
        denoiser = getattr(params, "denoiser", None) or current.denoiser  # params.denoiser: 1.8+
        if denoiser is not current.denoiser:
            return
        try:
            roles = plan_roles(denoiser, params)
        except Exception as e:  # noqa: BLE001
            current.run.warn_once(f"S-CFG could not map this batch ({type(e).__name__}: {e}); using plain CFG")
            roles = None
        if roles is None:
            current.run.begin_step([], 0.0)
            current.run.skip_step()
            return
        total = max(int(getattr(denoiser, "total_steps", 0) or 0), 1)
        current.run.begin_step(roles, getattr(denoiser, "step", 0) / total)

    def _combine(self, current: Pass, previous, x_out, conds_list, uncond, cond_scale):
        run = current.run
        if cond_scale == 1.0 or not run.active:
            # cond_scale 1.0: the WebUI skipped the uncond rows this step (NGMS / Skip Early CFG): stays plain
            run.skip_step()
            return previous(x_out, conds_list, uncond, cond_scale)
        try:
            n_uncond = uncond.shape[0]
            uncond_out = x_out[-n_uncond:]
            conds = [[(x_out[index], weight) for index, weight in image] for image in conds_list]
            guided = run.guided_conds(uncond_out, conds, cond_scale)
        except Exception as e:  # noqa: BLE001 - never break the generation
            run.warn_once(f"S-CFG failed on a step ({type(e).__name__}: {e}); that step used plain CFG")
            guided = {}
        if not guided:
            return previous(x_out, conds_list, uncond, cond_scale)
        x_guided = x_out.clone()
        for key, value in guided.items():
            x_guided[conds_list[key.image][key.index][0]] = value
        return previous(x_guided, conds_list, uncond, cond_scale)


def plan_roles(denoiser, params) -> list | None:
    """Roles of the rows of ``params.x`` as ``CFGDenoiser.forward`` lays them out: each image's cond rows
    (one per ``AND`` sub-prompt, in ``conds_list`` order), then one uncond row per image. None when the batch
    is not laid out that way (e.g. another extension changed it)."""
    cond = denoiser.sampler.sampler_extra_args["cond"]  # prompt_parser.MulticondLearnedConditioning
    batch = cond.batch
    roles: list = [Cond(i, j) for i, prompts in enumerate(batch) for j in range(len(prompts))]
    n_cond = len(roles)
    text_cond = params.text_cond
    rows_cond = text_cond.shape[0] if hasattr(text_cond, "shape") else text_cond["crossattn"].shape[0]
    if rows_cond != n_cond or params.x.shape[0] != n_cond + len(batch):
        return None
    return roles + [Uncond(i) for i in range(len(batch))]


def _restore(obj, name, value) -> None:
    if value is None:
        obj.__dict__.pop(name, None)
    else:
        setattr(obj, name, value)


def notice(p, message: str) -> None:
    """Tell the user: the console, and the generation info under the image (``p.comment``)."""
    log.warning(message)
    comment = getattr(p, "comment", None)
    if callable(comment):
        comment(message)
