"""Stand-in for modules/scripts.py @ A1111 v1.10.1 (82a973c).

Kept: Script (attributes, hook signatures as no-ops, elem_id formula), AlwaysVisible,
MaskBlendArgs / PostprocessImageArgs / PostprocessBatchListArgs / PostSampleArgs,
basedir(), scripts_data + ScriptClassData, load_scripts()'s per-file loading
(sys.path prepend/restore, module name = file basename, every Script subclass in the
module registered), and a ScriptRunner slice: initialize_scripts, create_script_ui(_inner)
(args_from/args_to, api_info, infotext_fields, paste_field_names), setup_ui_for_section,
ordered_scripts (only scripts whose class overrides the hook) and the AlwaysOn dispatchers
with try/except -> errors.report, set_named_arg.
Trimmed: extension listing / metadata.ini ordering, postprocessing scripts, the
"Script" dropdown UI of setup_ui, user callback ordering for script hooks.
"""

import inspect
import os
import re
import sys
from collections import namedtuple

import gradio as gr

from modules import errors, script_callbacks, script_loading, shared  # noqa: F401

# mirrors modules/scripts.py @ v1.10.1 (82a973c): AlwaysVisible sentinel
AlwaysVisible = object()


# mirrors modules/scripts.py @ v1.10.1 (82a973c): MaskBlendArgs
class MaskBlendArgs:
    def __init__(self, current_latent, nmask, init_latent, mask, blended_latent, denoiser=None, sigma=None):
        self.current_latent = current_latent
        self.nmask = nmask
        self.init_latent = init_latent
        self.mask = mask
        self.blended_latent = blended_latent

        self.denoiser = denoiser
        self.is_final_blend = denoiser is None
        self.sigma = sigma


# mirrors modules/scripts.py @ v1.10.1 (82a973c): PostSampleArgs
class PostSampleArgs:
    def __init__(self, samples):
        self.samples = samples


# mirrors modules/scripts.py @ v1.10.1 (82a973c): PostprocessImageArgs
class PostprocessImageArgs:
    def __init__(self, image):
        self.image = image


# mirrors modules/scripts.py @ v1.10.1 (82a973c): PostprocessBatchListArgs
class PostprocessBatchListArgs:
    def __init__(self, images):
        self.images = images


# mirrors modules/scripts.py @ v1.10.1 (82a973c): class Script (attributes + hook signatures, bodies are upstream
#   no-ops)
class Script:
    name = None
    section = None
    filename = None
    args_from = None
    args_to = None
    alwayson = False

    is_txt2img = False
    is_img2img = False
    tabname = None

    group = None
    create_group = True
    infotext_fields = None
    paste_field_names = None
    api_info = None
    on_before_component_elem_id = None
    on_after_component_elem_id = None
    setup_for_ui_only = False
    controls = None

    def title(self):
        raise NotImplementedError()

    def ui(self, is_img2img):
        pass

    def show(self, is_img2img):
        return True

    def run(self, p, *args):
        pass

    def setup(self, p, *args):
        pass

    def before_process(self, p, *args):
        pass

    def process(self, p, *args):
        pass

    def before_process_batch(self, p, *args, **kwargs):
        pass

    def after_extra_networks_activate(self, p, *args, **kwargs):
        pass

    def process_before_every_sampling(self, p, *args, **kwargs):
        pass

    def process_batch(self, p, *args, **kwargs):
        pass

    def postprocess_batch(self, p, *args, **kwargs):
        pass

    def postprocess_batch_list(self, p, pp: PostprocessBatchListArgs, *args, **kwargs):
        pass

    def on_mask_blend(self, p, mba: MaskBlendArgs, *args):
        pass

    def post_sample(self, p, ps: PostSampleArgs, *args):
        pass

    def postprocess_image(self, p, pp: PostprocessImageArgs, *args):
        pass

    def postprocess_maskoverlay(self, p, ppmo, *args):
        pass

    def postprocess_image_after_composite(self, p, pp: PostprocessImageArgs, *args):
        pass

    def postprocess(self, p, processed, *args):
        pass

    def before_component(self, component, **kwargs):
        pass

    def after_component(self, component, **kwargs):
        pass

    def on_before_component(self, callback, *, elem_id):
        if self.on_before_component_elem_id is None:
            self.on_before_component_elem_id = []

        self.on_before_component_elem_id.append((elem_id, callback))

    def on_after_component(self, callback, *, elem_id):
        if self.on_after_component_elem_id is None:
            self.on_after_component_elem_id = []

        self.on_after_component_elem_id.append((elem_id, callback))

    def describe(self):
        return ""

    def elem_id(self, item_id):
        """script_<tab>_<title>_<item_id>; <tab>_ only when show() answers the same for both tabs"""

        need_tabname = self.show(True) == self.show(False)
        tabkind = "img2img" if self.is_img2img else "txt2img"
        tabname = f"{tabkind}_" if need_tabname else ""
        title = re.sub(r"[^a-z_0-9]", "", re.sub(r"\s", "_", self.title().lower()))

        return f"script_{tabname}{title}_{item_id}"

    def before_hr(self, p, *args):
        pass


# upstream: paths.script_path (the webui root); here the stand-in root
script_path = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
current_basedir = script_path


# mirrors modules/scripts.py @ v1.10.1 (82a973c): basedir() -> extension dir while its scripts are being imported
def basedir():
    return current_basedir


ScriptFile = namedtuple("ScriptFile", ["basedir", "filename", "path"])

# mirrors modules/scripts.py @ v1.10.1 (82a973c): scripts_data / ScriptClassData
scripts_data = []
ScriptClassData = namedtuple("ScriptClassData", ["script_class", "path", "basedir", "module"])


# mirrors modules/scripts.py @ v1.10.1 (82a973c): load_scripts() for an explicit list of files
# (upstream lists <webui>/scripts/*.py then every enabled extension's scripts/*.py, ordered by metadata.ini)
def load_scripts(script_files=()):
    """script_files: iterable of ScriptFile(basedir, filename, path) or (basedir, path) pairs."""
    global current_basedir, scripts_txt2img, scripts_img2img
    scripts_data.clear()
    script_callbacks.clear_callbacks()

    syspath = sys.path

    def register_scripts_from_module(module):
        for script_class in module.__dict__.values():
            if not inspect.isclass(script_class):
                continue

            # NB: issubclass(Script, Script) is True -- `from modules.scripts import Script` registers the base class
            #   too
            if issubclass(script_class, Script):
                scripts_data.append(ScriptClassData(script_class, scriptfile.path, scriptfile.basedir, module))

    for scriptfile in script_files:
        if not isinstance(scriptfile, ScriptFile):
            sf_basedir, sf_path = scriptfile
            scriptfile = ScriptFile(sf_basedir, os.path.basename(sf_path), sf_path)
        try:
            if scriptfile.basedir != script_path:
                sys.path = [scriptfile.basedir] + sys.path
            current_basedir = scriptfile.basedir

            script_module = script_loading.load_module(scriptfile.path)
            register_scripts_from_module(script_module)

        except Exception:
            errors.report(f"Error loading script: {scriptfile.filename}", exc_info=True)

        finally:
            sys.path = syspath
            current_basedir = script_path

    scripts_txt2img = ScriptRunner()
    scripts_img2img = ScriptRunner()


# mirrors modules/scripts.py @ v1.10.1 (82a973c): wrap_call
def wrap_call(func, filename, funcname, *args, default=None, **kwargs):
    try:
        return func(*args, **kwargs)
    except Exception:
        errors.report(f"Error calling: {filename}/{funcname}", exc_info=True)

    return default


# mirrors modules/scripts.py @ v1.10.1 (82a973c): ScriptRunner (slice)
class ScriptRunner:
    def __init__(self):
        self.scripts = []
        self.selectable_scripts = []
        self.alwayson_scripts = []
        self.titles = []
        self.title_map = {}
        self.infotext_fields = []
        self.paste_field_names = []
        self.inputs = [None]

        self.callback_map = {}
        self.on_before_component_elem_id = {}
        self.on_after_component_elem_id = {}

    # mirrors ScriptRunner.initialize_scripts (auto-postprocessing scripts trimmed)
    def initialize_scripts(self, is_img2img):
        self.scripts.clear()
        self.alwayson_scripts.clear()
        self.selectable_scripts.clear()

        for script_data in scripts_data:
            try:
                script = script_data.script_class()
            except Exception:
                errors.report(f"Error # failed to initialize Script {script_data.module}: ", exc_info=True)
                continue

            script.filename = script_data.path
            script.is_txt2img = not is_img2img
            script.is_img2img = is_img2img
            script.tabname = "img2img" if is_img2img else "txt2img"

            visibility = script.show(script.is_img2img)

            if visibility == AlwaysVisible:
                self.scripts.append(script)
                self.alwayson_scripts.append(script)
                script.alwayson = True

            elif visibility:
                self.scripts.append(script)
                self.selectable_scripts.append(script)

        self.callback_map.clear()

    # mirrors ScriptRunner.create_script_ui
    def create_script_ui(self, script):
        script.args_from = len(self.inputs)
        script.args_to = len(self.inputs)

        try:
            self.create_script_ui_inner(script)
        except Exception:
            errors.report(f"Error creating UI for {script.name}: ", exc_info=True)

    # mirrors ScriptRunner.create_script_ui_inner
    def create_script_ui_inner(self, script):
        import modules.api.models as api_models

        controls = wrap_call(script.ui, script.filename, "ui", script.is_img2img)
        script.controls = controls

        if controls is None:
            return

        script.name = wrap_call(script.title, script.filename, "title", default=script.filename).lower()

        api_args = []

        for control in controls:
            control.custom_script_source = os.path.basename(script.filename)

            arg_info = api_models.ScriptArg(label=control.label or "")

            for field in ("value", "minimum", "maximum", "step"):
                v = getattr(control, field, None)
                if v is not None:
                    setattr(arg_info, field, v)

            # as of gradio 3.41, some items in choices are strings, some tuples whose first elem is the string
            choices = getattr(control, "choices", None)
            if choices is not None:
                arg_info.choices = [x[0] if isinstance(x, tuple) else x for x in choices]

            api_args.append(arg_info)

        script.api_info = api_models.ScriptInfo(
            name=script.name,
            is_img2img=script.is_img2img,
            is_alwayson=script.alwayson,
            args=api_args,
        )

        if script.infotext_fields is not None:
            self.infotext_fields += script.infotext_fields

        if script.paste_field_names is not None:
            self.paste_field_names += script.paste_field_names

        self.inputs += controls
        script.args_to = len(self.inputs)

    # mirrors ScriptRunner.setup_ui_for_section
    def setup_ui_for_section(self, section, scriptlist=None):
        if scriptlist is None:
            scriptlist = self.alwayson_scripts

        for script in scriptlist:
            if script.alwayson and script.section != section:
                continue

            if script.create_group:
                with gr.Group(visible=script.alwayson) as group:
                    self.create_script_ui(script)

                script.group = group
            else:
                self.create_script_ui(script)

    def prepare_ui(self):
        self.inputs = [None]

    # mirrors ScriptRunner.setup_ui, trimmed: title_map/titles + AlwaysOn UI (section None) + selectable UIs,
    # slot 0 (the "Script" dropdown) left as None
    def setup_ui(self):
        all_titles = [wrap_call(script.title, script.filename, "title") or script.filename for script in self.scripts]
        self.title_map = {title.lower(): script for title, script in zip(all_titles, self.scripts)}
        self.titles = [
            wrap_call(script.title, script.filename, "title") or f"{script.filename} [error]"
            for script in self.selectable_scripts
        ]

        self.setup_ui_for_section(None)
        self.setup_ui_for_section(None, self.selectable_scripts)

        return self.inputs

    # mirrors ScriptRunner.run (selectable script dispatch)
    def run(self, p, *args):
        script_index = args[0]

        if script_index == 0 or script_index is None:
            return None

        script = self.selectable_scripts[script_index - 1]

        if script is None:
            return None

        script_args = args[script.args_from : script.args_to]
        processed = script.run(p, *script_args)

        shared.total_tqdm.clear()

        return processed

    def list_scripts_for_method(self, method_name):
        if method_name in ("before_component", "after_component"):
            return self.scripts
        else:
            return self.alwayson_scripts

    # mirrors ScriptRunner.ordered_scripts: AlwaysOn scripts whose class overrides method_name, load order
    # (upstream then applies metadata.ini and prioritized_callbacks_script_<method> ordering; trimmed)
    def ordered_scripts(self, method_name):
        return [
            script
            for script in self.list_scripts_for_method(method_name)
            if getattr(script.__class__, method_name, None) != getattr(Script, method_name, None)
        ]

    def _alwayson(self, method_name, p, *pre, **kwargs):
        for script in self.ordered_scripts(method_name):
            try:
                script_args = p.script_args[script.args_from : script.args_to]
                getattr(script, method_name)(p, *pre, *script_args, **kwargs)
            except Exception:
                errors.report(f"Error running {method_name}: {script.filename}", exc_info=True)

    # mirrors ScriptRunner.before_process / process / process_before_every_sampling / before_process_batch /
    # after_extra_networks_activate / process_batch / postprocess / postprocess_batch / postprocess_batch_list /
    # post_sample / on_mask_blend / postprocess_image / before_hr / setup_scrips:
    # each = for script in ordered_scripts(name): try: script.<name>(p, [extra,] *p.script_args[args_from:args_to],
    #   **kw)
    #        except Exception: errors.report(f"Error running <name>: {script.filename}", exc_info=True)
    def before_process(self, p):
        self._alwayson("before_process", p)

    def process(self, p):
        self._alwayson("process", p)

    def process_before_every_sampling(self, p, **kwargs):
        self._alwayson("process_before_every_sampling", p, **kwargs)

    def before_process_batch(self, p, **kwargs):
        self._alwayson("before_process_batch", p, **kwargs)

    def after_extra_networks_activate(self, p, **kwargs):
        self._alwayson("after_extra_networks_activate", p, **kwargs)

    def process_batch(self, p, **kwargs):
        self._alwayson("process_batch", p, **kwargs)

    def postprocess(self, p, processed):
        self._alwayson("postprocess", p, processed)

    def postprocess_batch(self, p, images, **kwargs):
        self._alwayson("postprocess_batch", p, images=images, **kwargs)

    def postprocess_batch_list(self, p, pp: PostprocessBatchListArgs, **kwargs):
        self._alwayson("postprocess_batch_list", p, pp, **kwargs)

    def post_sample(self, p, ps: PostSampleArgs):
        self._alwayson("post_sample", p, ps)

    def on_mask_blend(self, p, mba: MaskBlendArgs):
        self._alwayson("on_mask_blend", p, mba)

    def postprocess_image(self, p, pp: PostprocessImageArgs):
        self._alwayson("postprocess_image", p, pp)

    def before_hr(self, p):
        self._alwayson("before_hr", p)

    def before_component(self, component, **kwargs):
        for script in self.ordered_scripts("before_component"):
            try:
                script.before_component(component, **kwargs)
            except Exception:
                errors.report(f"Error running before_component: {script.filename}", exc_info=True)

    def after_component(self, component, **kwargs):
        for script in self.ordered_scripts("after_component"):
            try:
                script.after_component(component, **kwargs)
            except Exception:
                errors.report(f"Error running after_component: {script.filename}", exc_info=True)

    # mirrors ScriptRunner.setup_scrips (sic): Script.setup, skipped for API calls when setup_for_ui_only
    def setup_scrips(self, p, *, is_ui=True):
        for script in self.ordered_scripts("setup"):
            if not is_ui and script.setup_for_ui_only:
                continue

            try:
                script_args = p.script_args[script.args_from : script.args_to]
                script.setup(p, *script_args)
            except Exception:
                errors.report(f"Error running setup: {script.filename}", exc_info=True)

    def script(self, title):
        return self.title_map.get(title.lower())

    # mirrors ScriptRunner.set_named_arg
    def set_named_arg(self, args, script_name, arg_elem_id, value, fuzzy=False):
        script = next((x for x in self.scripts if x.name == script_name), None)
        if script is None:
            raise RuntimeError(f"script {script_name} not found")

        for i, control in enumerate(script.controls):
            if arg_elem_id in control.elem_id if fuzzy else arg_elem_id == control.elem_id:
                index = script.args_from + i

                if isinstance(args, tuple):
                    return args[:index] + (value,) + args[index + 1 :]
                elif isinstance(args, list):
                    args[index] = value
                    return args
                else:
                    raise RuntimeError(f"args is not a list or tuple, but {type(args)}")
        raise RuntimeError(f"arg_elem_id {arg_elem_id} not found in script {script_name}")


# mirrors modules/scripts.py @ v1.10.1 (82a973c): module-level runners (upstream created by load_scripts; set by
#   ui.create_ui)
scripts_txt2img: ScriptRunner = ScriptRunner()
scripts_img2img: ScriptRunner = ScriptRunner()
scripts_current: ScriptRunner = None
