"""Stand-in for modules/shared.py @ A1111 v1.10.1 (82a973c).

Upstream fills `opts` from modules/shared_options.py (hundreds of settings) in
shared_init.initialize() and `state` with modules/shared_state.State. The stand-in
creates both at import time with only the settings that code on our paths reads;
each default below is the upstream default in modules/shared_options.py @ 82a973c.
"""

import logging

from modules import options
from modules.shared_cmd_options import cmd_opts  # noqa: F401  (upstream: shared.cmd_opts)

log = logging.getLogger(__name__)

OptionInfo = options.OptionInfo
OptionHTML = options.OptionHTML
options_section = options.options_section

batch_cond_uncond = True  # old field, unused now in favor of shared.opts.batch_cond_uncond
parallel_processing_allowed = True

demo = None
device = None
xformers_available = False
loaded_hypernetworks = []
prompt_styles = None  # upstream: styles.StyleDatabase; None here -> style extraction skipped when pasting

sd_model = None  # upstream: the loaded WebuiSdModel (ldm LatentDiffusion / sgm DiffusionEngine); tests assign one


# mirrors modules/shared_options.py @ v1.10.1 (82a973c): the options (key, default, label, infotext) our code paths read
def _options_templates():
    OI = options.OptionInfo
    return {
        # section "optimizations" (shared_options.py ~233-242)
        "cross_attention_optimization": OI("Automatic", "Cross attention optimization"),
        "s_min_uncond": OI(0.0, "Negative Guidance minimum sigma", infotext="NGMS"),
        "s_min_uncond_all": OI(False, "Negative Guidance minimum sigma all steps", infotext="NGMS all steps"),
        "token_merging_ratio": OI(0.0, "Token merging ratio", infotext="Token merging ratio"),
        "pad_cond_uncond": OI(False, "Pad prompt/negative prompt", infotext="Pad conds"),
        "pad_cond_uncond_v0": OI(False, "Pad prompt/negative prompt (v0)", infotext="Pad conds v0"),
        "persistent_cond_cache": OI(True, "Persistent cond cache"),
        "batch_cond_uncond": OI(True, "Batch cond/uncond"),
        # section "sd" (~176-185)
        "enable_quantization": OI(
            False, "Enable quantization in K samplers for sharper and cleaner results. This may change existing seeds"
        ),
        "emphasis": OI("Original", "Emphasis mode", infotext="Emphasis"),
        "comma_padding_backtrack": OI(20, "Prompt word wrap length limit"),
        "CLIP_stop_at_last_layers": OI(1, "Clip skip", infotext="Clip skip"),
        "upcast_attn": OI(False, "Upcast cross attention layer to float32"),
        "hires_fix_refiner_pass": OI(
            "second pass", "Hires fix: which pass to enable refiner for", infotext="Hires refiner"
        ),
        # section "compatibility" (~249-256)
        "use_old_scheduling": OI(False, "Use old prompt editing timelines.", infotext="Old prompt editing timelines"),
        "refiner_switch_by_sample_steps": OI(
            False,
            "Switch to refiner by sampling steps instead of model timesteps. Old behavior for refiner.",
            infotext="Refiner switch by sampling steps",
        ),
        # section "saving-images" (shared_options.py:35-36, 73)
        "samples_save": OI(True, "Always save all generated images"),
        "samples_format": OI("png", "File format for images"),
        "save_incomplete_images": OI(False, "Save incomplete images"),
        # section "infotext" (~361-363)
        "disable_weights_auto_swap": OI(True, "Disregard checkpoint information from pasted infotext"),
        "infotext_skip_pasting": OI([], "Disregard fields from pasted infotext"),
        "infotext_styles": OI("Apply if any", "Infer styles from prompts of pasted infotext"),
        "send_seed": OI(True, "Send seed when sending prompt or image to other interface"),
        "send_size": OI(True, "Send size when sending prompt or image to another interface"),
        # section "ui" / live previews (~374-380)
        "live_previews_enable": OI(True, "Show live previews of the created image"),
        "show_progress_every_n_steps": OI(10, "Live preview display period"),
        "live_preview_content": OI("Prompt", "Live preview subject"),
        "return_grid": OI(True, "Show grid in gallery"),
        "img_max_size_mp": OI(200, "Maximum image size"),
        "hide_samplers": OI([], "Hide samplers in user interface"),
        # section "sampler-params" (~395-407)
        "eta_ancestral": OI(1.0, "Eta for k-diffusion samplers", infotext="Eta"),
        "always_discard_next_to_last_sigma": OI(
            False, "Always discard next-to-last sigma", infotext="Discard penultimate sigma"
        ),
        "sgm_noise_multiplier": OI(False, "SGM noise multiplier", infotext="SGM noise multiplier"),
        "uni_pc_order": OI(3, "UniPC order", infotext="UniPC order"),
        "skip_early_cond": OI(0.0, "Ignore negative prompt during early sampling", infotext="Skip Early CFG"),
        "img2img_fix_steps": OI(False, "With img2img, do exactly the amount of steps the slider specifies."),
        "img2img_extra_noise": OI(0.0, "Extra noise multiplier for img2img and hires fix", infotext="Extra noise"),
        # section "img2img" (~217)
        "initial_noise_multiplier": OI(1.0, "Noise multiplier for img2img", infotext="Noise multiplier"),
        # infotext rendering (processing.create_infotext)
        "add_model_hash_to_info": OI(True, "Add model hash to infotext"),
        "add_model_name_to_info": OI(True, "Add model name to infotext"),
        "add_version_to_infotext": OI(True, "Add program version to infotext"),
        "eta_noise_seed_delta": OI(0, "Eta noise seed delta", infotext="ENSD"),
        "randn_source": OI("GPU", "Random number generator source.", infotext="RNG"),
    }


options_templates: dict = _options_templates()
restricted_opts: set = set()

# mirrors modules/shared.py @ v1.10.1 (82a973c): opts (an options.Options over options_templates)
opts = options.Options(options_templates, restricted_opts)


def reset_opts():
    """Stand-in only: restore every option (and remove options added by add_option) to the defaults above."""
    global options_templates
    options_templates = _options_templates()
    opts.data_labels = options_templates
    opts.data = {k: v.default for k, v in options_templates.items() if not v.do_not_save}


# mirrors modules/shared_state.py @ v1.10.1 (82a973c): State (fields + interrupt/skip/nextjob/begin/end;
# trimmed: server commands, live-preview image decoding, job timing)
class State:
    skipped = False
    interrupted = False
    stopping_generation = False
    job = ""
    job_no = 0
    job_count = 0
    processing_has_refined_job_count = False
    job_timestamp = "0"
    sampling_step = 0
    sampling_steps = 0
    current_latent = None
    current_image = None
    current_image_sampling_step = 0
    id_live_preview = 0
    textinfo = None
    time_start = None

    def skip(self):
        self.skipped = True
        log.info("Received skip request")

    def interrupt(self):
        self.interrupted = True
        log.info("Received interrupt request")

    def stop_generating(self):
        self.stopping_generation = True
        log.info("Received stop generating request")

    def nextjob(self):
        self.job_no += 1
        self.sampling_step = 0
        self.current_image_sampling_step = 0

    def begin(self, job: str = "(unknown)"):
        self.sampling_step = 0
        self.time_start = None
        self.job_count = -1
        self.processing_has_refined_job_count = False
        self.job_no = 0
        self.job_timestamp = "0"
        self.current_latent = None
        self.current_image = None
        self.current_image_sampling_step = 0
        self.id_live_preview = 0
        self.skipped = False
        self.interrupted = False
        self.stopping_generation = False
        self.textinfo = None
        self.job = job

    def end(self):
        self.job = ""
        self.job_count = 0


state = State()


# mirrors modules/shared_total_tqdm.py @ v1.10.1 (82a973c): total_tqdm, trimmed to no-op update/clear
class TotalTQDM:
    def reset(self):
        pass

    def update(self):
        pass

    def updateTotal(self, new_total):
        pass

    def clear(self):
        pass


total_tqdm = TotalTQDM()
