"""Stand-in for modules/gradio_extensons.py @ A1111 v1.10.1 (82a973c) (sic: "extensons").

Upstream this module is imported once at start-up by modules/initialize.py:39
(`from modules import processing, gradio_extensons, ui`) and by modules/ui.py:15, i.e.
before any extension script is loaded, so the patches below are always in effect.
The stand-in is imported by modules/__init__.py for the same reason.
Kept: IOComponent.__init__ patch (pops `tooltip=` into `webui_tooltip`, runs the
before/after component callbacks, adds gradio-<block> css classes) and BlockContext.__init__.
Trimmed: get_config / get_config_file patches, ui_tempdir override.
"""

import gradio as gr

from modules import patches, scripts


# mirrors modules/gradio_extensons.py @ v1.10.1 (82a973c): add_classes_to_gradio_component
def add_classes_to_gradio_component(comp):
    comp.elem_classes = [f"gradio-{comp.get_block_name()}", *(comp.elem_classes or [])]

    if getattr(comp, "multiselect", False):
        comp.elem_classes.append("multiselect")


# mirrors modules/gradio_extensons.py @ v1.10.1 (82a973c): IOComponent_init
def IOComponent_init(self, *args, **kwargs):
    self.webui_tooltip = kwargs.pop("tooltip", None)

    if scripts.scripts_current is not None:
        scripts.scripts_current.before_component(self, **kwargs)

    scripts.script_callbacks.before_component_callback(self, **kwargs)

    res = original_IOComponent_init(self, *args, **kwargs)

    add_classes_to_gradio_component(self)

    scripts.script_callbacks.after_component_callback(self, **kwargs)

    if scripts.scripts_current is not None:
        scripts.scripts_current.after_component(self, **kwargs)

    return res


# mirrors modules/gradio_extensons.py @ v1.10.1 (82a973c): BlockContext_init
def BlockContext_init(self, *args, **kwargs):
    if scripts.scripts_current is not None:
        scripts.scripts_current.before_component(self, **kwargs)

    scripts.script_callbacks.before_component_callback(self, **kwargs)

    res = original_BlockContext_init(self, *args, **kwargs)

    add_classes_to_gradio_component(self)

    scripts.script_callbacks.after_component_callback(self, **kwargs)

    if scripts.scripts_current is not None:
        scripts.scripts_current.after_component(self, **kwargs)

    return res


original_IOComponent_init = patches.patch(
    __name__, obj=gr.components.IOComponent, field="__init__", replacement=IOComponent_init
)
original_BlockContext_init = patches.patch(
    __name__, obj=gr.blocks.BlockContext, field="__init__", replacement=BlockContext_init
)
