"""Load the extension the way A1111 does, against the stand-in ``modules.*`` (tests/stand_in), and drive
generations with a real small ldm U-Net and real k-diffusion samplers.

``load_webui()`` mirrors ``modules/scripts.py`` ``load_scripts`` (script files loaded as ``<basename>.py``,
the extension dir on ``sys.path`` only while loading); ``generate()`` mirrors the order of
``modules/processing.py`` ``process_images_inner`` @ v1.10.1 for what matters here: ``scripts.process`` ->
conds -> ``p.sample`` (sampler creation, ``process_before_every_sampling``, sampling) -> [hires pass:
``sample_hr_pass``] -> ``scripts.postprocess``. Conditioning comes from tensors (no text encoder offline).
"""

from __future__ import annotations

import contextlib
import sys
import types
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
STAND_IN = Path(__file__).resolve().parent / "stand_in"
SCRIPT = ROOT / "scripts" / "scfg.py"
XYZ = STAND_IN / "webui_scripts" / "xyz_grid.py"


def load_webui(extra_scripts=()):
    """Import the stand-in WebUI and load xyz_grid.py, ``extra_scripts`` (other extensions' script files, in
    this order, before ours: their AlwaysOn hooks run first) and our script through ``scripts.load_scripts``."""
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

    extra = [str(f) for f in extra_scripts]
    scripts.load_scripts([(scripts.script_path, str(XYZ)), *((str(Path(f).parent), f) for f in extra),
                          (str(ROOT), str(SCRIPT))])
    ns = types.SimpleNamespace(scripts=scripts, shared=shared, processing=processing, prompt_parser=prompt_parser,
                               script_callbacks=script_callbacks)
    ns.script_module = next(d.module for d in scripts.scripts_data if d.path == str(SCRIPT))
    ns.xyz = next(d.module for d in scripts.scripts_data if d.path == str(XYZ))
    ns.extra_modules = [next(d.module for d in scripts.scripts_data if d.path == f) for f in extra]
    return ns


def build_runner(webui, is_img2img=False):
    """``ScriptRunner.initialize_scripts`` + ``setup_ui`` inside ``gr.Blocks`` (as ``modules/ui.py`` does)."""
    import gradio as gr

    runner = webui.scripts.scripts_img2img if is_img2img else webui.scripts.scripts_txt2img
    runner.initialize_scripts(is_img2img)
    with gr.Blocks():
        runner.setup_ui()
    return runner


@contextlib.contextmanager
def extension_absent(webui):
    """The WebUI as if the extension were not installed: its ``script_callbacks`` registrations (made from
    ``scripts/scfg.py``) are taken out for the duration; use with ``generate(webui, None, ...)`` or a runner
    without our script."""
    cb = webui.script_callbacks
    saved = {name: list(callbacks) for name, callbacks in cb.callback_map.items()}
    for callbacks in cb.callback_map.values():
        callbacks[:] = [c for c in callbacks if c.script != str(SCRIPT)]
    cb.ordered_callbacks_map.clear()
    try:
        yield
    finally:
        for name, callbacks in saved.items():
            cb.callback_map[name][:] = callbacks
        cb.ordered_callbacks_map.clear()  # rebuilt from callback_map on next use


def our_script(runner):
    return next(s for s in runner.alwayson_scripts if s.title() == "S-CFG")


def script_args_app(webui, api_module, encode=list):
    """A FastAPI app with the WebUI's ``api_middleware`` (``Api(app)``) and a ``/sdapi/v1/txt2img`` route that runs
    only the script-args part of the request (``init_script_args``) and answers S-CFG's slice, ``encode``d.
    Returns ``(app, api)``."""
    from fastapi import FastAPI

    app = FastAPI()
    api = api_module.Api(app, txt2img_runner=webui.txt2img, img2img_runner=webui.img2img)

    @app.post("/sdapi/v1/txt2img")
    def txt2img(body: dict):
        args = api.script_args_for_request(api_module.SimpleRequest(**body))
        script = our_script(webui.txt2img)
        return {"scfg_args": encode(args[script.args_from:script.args_to])}

    return app, api


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
    from modules.sd_hijack_clip import FrozenCLIPEmbedderWithCustomWords

    from scfg_ext import testbed

    model = testbed.LatentDiffusionStub(unet, parameterization)
    model.cond_stage_model = FrozenCLIPEmbedderWithCustomWords()  # the hijacked prompt engine (tokens only)
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


def make_p(webui, runner, unet_model, batch_size=1, *, size=(32, 32), steps=3, sampler="Euler", cfg_scale=7.5,
           seed=0, args=None, img2img=None, mask=None, p_fields=None, n_iter=1):
    """The processing object the UI builds for a generation (before ``process_images``): txt2img, or
    ``StableDiffusionProcessingImg2Img`` after ``init()`` when ``img2img=init_latent`` (optionally with a latent
    ``mask``, 1 = keep the original). ``runner=None``: no scripts (``p.scripts`` None). ``size`` is the latent size."""
    processing = webui.processing
    webui.shared.sd_model = unet_model
    b = batch_size
    fields = dict(sampler_name=sampler, steps=steps, cfg_scale=cfg_scale, batch_size=b, n_iter=n_iter, seed=seed,
                  width=size[1] * 8, height=size[0] * 8, **(p_fields or {}))
    if img2img is None:
        p = processing.StableDiffusionProcessingTxt2Img(**fields)
    else:
        p = processing.StableDiffusionProcessingImg2Img(**{"denoising_strength": 0.6, **fields})
        p.init_latent = img2img
        # processing.py img2img_image_conditioning: an edit (instruct-pix2pix) model is conditioned on the
        # encoded source image; other non-inpainting models get (B, 5, 1, 1) zeros
        edit = getattr(unet_model, "cond_stage_key", None) == "edit"
        p.image_conditioning = img2img if edit else img2img.new_zeros(b, 5, 1, 1)
        if mask is not None:
            p.mask, p.nmask = mask, 1 - mask
    if runner is not None:
        p.scripts = runner
        p.script_args = args if args is not None else script_args(runner)
    return p


def generate(webui, runner, unet_model, prompts, uncond, *, size=(32, 32), steps=3, sampler="Euler",
             cfg_scale=7.5, seed=0, args=None, hires=None, img2img=None, mask=None, p_fields=None, n_iter=1,
             noise=None, p=None, cell=None, firstpass=None, texts=None, forge=False):
    """One generation (batch = len(prompts), ``n_iter`` batches) through the stand-in pipeline; returns
    ``(samples, p)`` with the samples of all batches concatenated.

    ``p`` from ``make_p`` is used instead of a new one built from the keyword arguments of ``make_p`` (size,
    steps, sampler, cfg_scale, seed, args, img2img, mask, p_fields, n_iter; the values in ``p`` win).
    ``cell=[(axis_option, value, all_values), ...]`` runs one X/Y/Z plot cell: ``xyz_grid``'s shallow copy of
    ``p`` with the axes applied, then the processing of that copy (pass the same ``p`` to every cell, as the
    grid does). Batch ``n`` draws its noise from seed ``p.seed + n * batch size`` (the first batch's ``noise``
    may be given instead). ``hires=(latent_size, steps)`` adds the hires pass (latent upscale) as
    ``StableDiffusionProcessingTxt2Img.sample_hr_pass`` does it; with ``firstpass=latent`` the first pass is
    not sampled (upstream's ``firstpass_image`` path: no ``process_before_every_sampling`` for it). img2img's
    sampler is created once, in ``init()``, and reused by every batch, as upstream.

    ``texts``: the prompt text of every image (all batches; default "a prompt"), what ``p.all_prompts`` /
    ``p.prompts`` hold (the conds still come from ``prompts``). ``scripts.postprocess`` gets a ``Processed``
    (Forge's, with ``extra_images``, when ``forge``) of the samples "decoded" by ``decode``, one infotext each
    (``create_infotext``), as ``process_images_inner`` makes it; it is left on ``p.harness_processed``.
    """
    import torch.nn.functional as F
    from modules import sd_samplers

    if p is None:
        p = make_p(webui, runner, unet_model, len(prompts), size=size, steps=steps, sampler=sampler,
                   cfg_scale=cfg_scale, seed=seed, args=args, img2img=img2img, mask=mask, p_fields=p_fields,
                   n_iter=n_iter)
    if cell:
        p = webui.xyz.apply_cell(p, cell)
    webui.shared.sd_model = unet_model
    b, size, img2img = p.batch_size, (p.height // 8, p.width // 8), getattr(p, "init_latent", None)
    p.fill_fields_from_opts()
    count = p.n_iter * b
    p.all_prompts = list(texts) if texts is not None else ["a prompt"] * count
    p.all_negative_prompts = [""] * count
    p.all_seeds = [p.seed + k for k in range(count)]
    p.all_subseeds = list(p.all_seeds)
    if forge:
        p.extra_result_images = []
    if p.scripts is not None:
        p.scripts.before_process(p)
        p.scripts.process(p)
    c, uc = conds(prompts, p.steps, uncond)
    if img2img is not None:
        p.sampler = sd_samplers.create_sampler(p.sampler_name, unet_model)  # img2img's init() creates it, once
    batches = []
    for n in range(p.n_iter):  # processing.py process_images_inner: one p.sample per batch
        p.iteration = n
        p.prompts = p.all_prompts[n * b:(n + 1) * b]
        p.seeds = p.all_seeds[n * b:(n + 1) * b]
        gen = torch.Generator().manual_seed(p.seed + n * b)
        x = torch.randn(b, 4, *size, generator=gen)
        if n == 0 and noise is not None:
            x = noise
        p.rng = types.SimpleNamespace(next=lambda x=x: x.clone())
        samples = p.sample(c, uc, None, None, 0, None) if firstpass is None else firstpass
        if hires is not None:  # processing.py sample_hr_pass (~1364-1460), latent upscaler path
            hr_size, hr_steps = hires
            p.is_hr_pass = True
            p.sampler = sd_samplers.create_sampler(p.sampler_name, unet_model)
            samples = F.interpolate(samples, size=hr_size, mode="bilinear")
            hr_noise = torch.randn(b, 4, *hr_size, generator=gen)
            if p.scripts is not None:
                p.scripts.before_hr(p)
                p.scripts.process_before_every_sampling(p, x=samples, noise=hr_noise, c=c, uc=uc)
            samples = p.sampler.sample_img2img(p, samples, hr_noise, c, uc, steps=hr_steps,
                                               image_conditioning=samples.new_zeros(b, 5, 1, 1))
            p.sampler = None
            p.is_hr_pass = False
        batches.append(samples)
    samples = torch.cat(batches)
    processing = webui.processing
    images = [decode(x) for x in samples]
    infotexts = [processing.create_infotext(p, p.all_prompts, p.all_seeds, p.all_subseeds, index=k)
                 for k in range(len(images))]
    processed = processing.Processed(p, images, p.all_seeds[0], infotexts[0], infotexts=infotexts, forge=forge,
                                     extra_images_list=getattr(p, "extra_result_images", None))
    if p.scripts is not None:
        p.scripts.postprocess(p, processed)
    p.harness_processed = processed
    return samples, p


def decode(latent):
    """A stand-in for the VAE: the first three latent channels as colours, 8x nearest upscaled (PIL RGB)."""
    from PIL import Image

    rgb = ((torch.tanh(latent[:3].float()) + 1) * 127.5).round().clamp(0, 255).to(torch.uint8)
    rgb = rgb.repeat_interleave(8, 1).repeat_interleave(8, 2).permute(1, 2, 0).contiguous()
    return Image.fromarray(rgb.cpu().numpy(), "RGB")
