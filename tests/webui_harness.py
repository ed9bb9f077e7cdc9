"""Load the extension the way A1111 does, against the stand-in ``modules.*`` (tests/stand_in), and drive
generations with a real small ldm U-Net and real k-diffusion samplers.

``load_webui()`` mirrors ``modules/scripts.py`` ``load_scripts`` (script files loaded as ``<basename>.py``,
the extension dir on ``sys.path`` only while loading); ``generate()`` mirrors the order of
``modules/processing.py`` ``process_images_inner`` @ v1.10.1 for what matters here: ``scripts.process`` ->
conds -> ``p.sample`` (sampler creation, ``process_before_every_sampling``, sampling) -> [hires pass:
``sample_hr_pass``] -> ``scripts.postprocess``. Conditioning comes from tensors (no text encoder offline).
"""

from __future__ import annotations

import sys
import types
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
STAND_IN = Path(__file__).resolve().parent / "stand_in"
SCRIPT = ROOT / "scripts" / "scfg.py"
XYZ = STAND_IN / "webui_scripts" / "xyz_grid.py"


def load_webui():
    """Import the stand-in WebUI and load xyz_grid.py and our script through ``scripts.load_scripts``."""
    if str(STAND_IN) not in sys.path:
        sys.path.insert(0, str(STAND_IN))
    from scfg_ext import testbed

    testbed.import_k_diffusion()  # the real k-diffusion sampling/external, before modules import them

    import modules.gradio_extensons  # noqa: F401 - the tooltip= patch, as initialize.py applies it
    import modules.processing as processing
    import modules.prompt_parser as prompt_parser
    import modules.script_callbacks as script_callbacks
    import modules.scripts as scripts
    import modules.shared as shared

    scripts.load_scripts([(scripts.script_path, str(XYZ)), (str(ROOT), str(SCRIPT))])
    ns = types.SimpleNamespace(scripts=scripts, shared=shared, processing=processing, prompt_parser=prompt_parser,
                               script_callbacks=script_callbacks)
    ns.script_module = next(d.module for d in scripts.scripts_data if d.path == str(SCRIPT))
    ns.xyz = next(d.module for d in scripts.scripts_data if d.path == str(XYZ))
    return ns


def build_runner(webui, is_img2img=False):
    """``ScriptRunner.initialize_scripts`` + ``setup_ui`` inside ``gr.Blocks`` (as ``modules/ui.py`` does)."""
    import gradio as gr

    runner = webui.scripts.scripts_img2img if is_img2img else webui.scripts.scripts_txt2img
    runner.initialize_scripts(is_img2img)
    with gr.Blocks():
        runner.setup_ui()
    return runner


def our_script(runner):
    return next(s for s in runner.alwayson_scripts if s.title() == "S-CFG")


def script_args(runner, **overrides):
    """All components' default values (``p.script_args`` as the UI sends it), with S-CFG values by name."""
    from scfg_ext.settings import FIELDS

    args = [0] + [getattr(c, "value", None) for c in runner.inputs[1:]]
    script = our_script(runner)
    for i, f in enumerate(FIELDS):
        if f.name in overrides:
            args[script.args_from + i] = overrides[f.name]
    return tuple(args)


def sd_model(unet, parameterization="eps"):
    """A WebUI-loaded SD1 model stand-in: the real U-Net under ldm's ``model.diffusion_model`` path, SD's
    schedule, and the flags ``modules/sd_models.py`` sets."""
    from scfg_ext import testbed

    model = testbed.LatentDiffusionStub(unet, parameterization)
    model.is_sd1, model.is_sd2, model.is_sdxl, model.is_sd3 = parameterization == "eps", parameterization == "v", \
        False, False
    return model


def conds(prompts, steps, uncond=None):
    """``(c, uc)`` as ``prompt_parser.get_multicond_learned_conditioning`` / ``get_learned_conditioning``
    return them, from tensors: ``prompts[i]`` is a list of ``(tensor (T, 768) or [(end_at_step, tensor)...],
    weight)`` sub-prompts of image i; ``uncond[i]`` a tensor per image."""
    pp = sys.modules["modules.prompt_parser"]

    def schedule(t):
        entries = t if isinstance(t, list) else [(steps, t)]
        return [pp.ScheduledPromptConditioning(end, cond) for end, cond in entries]

    batch = [[pp.ComposableScheduledPromptConditioning(schedule(t), w) for t, w in image] for image in prompts]
    c = pp.MulticondLearnedConditioning(shape=(len(prompts),), batch=batch)
    uc = [schedule(u) for u in uncond]
    return c, uc


def generate(webui, runner, unet_model, prompts, uncond, *, size=(32, 32), steps=3, sampler="Euler",
             cfg_scale=7.5, seed=0, args=None, hires=None, img2img=None, mask=None, p_fields=None):
    """One generation (batch = len(prompts)) through the stand-in pipeline; returns ``(samples, p)``.

    ``size`` is the latent size. ``hires=(latent_size, steps)`` adds the hires pass (latent upscale) as
    ``StableDiffusionProcessingTxt2Img.sample_hr_pass`` does it. ``img2img=init_latent`` (optionally with a
    latent ``mask``, 1 = keep the original) runs ``StableDiffusionProcessingImg2Img`` instead.
    """
    import torch.nn.functional as F

    processing = webui.processing
    webui.shared.sd_model = unet_model
    gen = torch.Generator().manual_seed(seed)
    b = len(prompts)
    noise = torch.randn(b, 4, *size, generator=gen)
    fields = dict(sampler_name=sampler, steps=steps, cfg_scale=cfg_scale, batch_size=b, width=size[1] * 8,
                  height=size[0] * 8, **(p_fields or {}))
    if img2img is None:
        p = processing.StableDiffusionProcessingTxt2Img(**fields)
    else:
        p = processing.StableDiffusionProcessingImg2Img(denoising_strength=0.6, **fields)
        p.init_latent = img2img
        p.image_conditioning = img2img.new_zeros(b, 5, 1, 1)
        if mask is not None:
            p.mask, p.nmask = mask, 1 - mask
    p.rng = types.SimpleNamespace(next=lambda: noise.clone())
    p.scripts = runner
    p.script_args = args if args is not None else script_args(runner)
    p.fill_fields_from_opts()
    runner.before_process(p)
    runner.process(p)
    c, uc = conds(prompts, steps, uncond)
    if img2img is not None:
        from modules import sd_samplers

        p.sampler = sd_samplers.create_sampler(sampler, unet_model)  # img2img's init() creates it
    samples = p.sample(c, uc, None, None, 0, None)
    if hires is not None:  # processing.py sample_hr_pass (~1364-1460), latent upscaler path
        from modules import sd_samplers

        hr_size, hr_steps = hires
        p.is_hr_pass = True
        p.sampler = sd_samplers.create_sampler(sampler, unet_model)
        samples = F.interpolate(samples, size=hr_size, mode="bilinear")
        hr_noise = torch.randn(b, 4, *hr_size, generator=gen)
        runner.before_hr(p)
        runner.process_before_every_sampling(p, x=samples, noise=hr_noise, c=c, uc=uc)
        samples = p.sampler.sample_img2img(p, samples, hr_noise, c, uc, steps=hr_steps,
                                           image_conditioning=samples.new_zeros(b, 5, 1, 1))
        p.sampler = None
        p.is_hr_pass = False
    runner.postprocess(p, types.SimpleNamespace(images=[]))
    return samples, p
