"""Stand-in for Forge's modules/ui_components.py @ lllyasviel/stable-diffusion-webui-forge dfdcbab (gradio 4.40.0).

Kept: ``InputAccordionImpl`` and the ``InputAccordion`` function (verbatim logic), plus the parts of
``modules/gradio_extensions.py`` @ dfdcbab that upstream ``ui_components`` imports first and that our UI goes
through: the ``create_or_modify_pyi`` skip, ``component_meta.updateable`` disabled, and ``repair`` (every component's
``__init__`` drops unknown kwargs with a ``GradioDeprecationWarning``, pops ``tooltip``, and wraps events so
``_js=`` becomes ``js=``).
Trimmed: FormComponent, ToolButton, ResizeHandleRow, Form*, Dropdown*; from gradio_extensions: the
``Component``/``BlockContext`` ``__init__`` patches (script callbacks, ``gradio-*`` css classes), the
``get_config`` patches, ``Dependency.then``, ``gr.Box``, the ui_tempdir override.
"""

import inspect
import warnings
from functools import wraps

import gradio as gr
import gradio.component_meta


# mirrors modules/gradio_extensions.py @ dfdcbab: GradioDeprecationWarning
class GradioDeprecationWarning(DeprecationWarning):
    pass


# mirrors modules/gradio_extensions.py @ dfdcbab: gradio_component_meta_create_or_modify_pyi (no .pyi files written
# next to classes marked webui_do_not_create_gradio_pyi_thank_you) and `gradio.component_meta.updateable = ...`
def gradio_component_meta_create_or_modify_pyi(component_class, class_name, events):
    if hasattr(component_class, "webui_do_not_create_gradio_pyi_thank_you"):
        return
    gradio_component_meta_create_or_modify_pyi_original(component_class, class_name, events)


gradio_component_meta_create_or_modify_pyi_original = gradio.component_meta.create_or_modify_pyi
gradio.component_meta.create_or_modify_pyi = gradio_component_meta_create_or_modify_pyi
gradio.component_meta.updateable = lambda x: x


# mirrors modules/gradio_extensions.py @ dfdcbab: EventWrapper
class EventWrapper:
    def __init__(self, replaced_event):
        self.replaced_event = replaced_event
        self.has_trigger = getattr(replaced_event, "has_trigger", None)
        self.event_name = getattr(replaced_event, "event_name", None)
        self.callback = getattr(replaced_event, "callback", None)
        self.real_self = getattr(replaced_event, "__self__", None)

    def __call__(self, *args, **kwargs):
        if "_js" in kwargs:
            kwargs["js"] = kwargs["_js"]
            del kwargs["_js"]
        return self.replaced_event(*args, **kwargs)

    @property
    def __self__(self):
        return self.real_self


# mirrors modules/gradio_extensions.py @ dfdcbab: repair, applied to every gr component and layout
def repair(grclass):
    if not getattr(grclass, "EVENTS", None):
        return

    @wraps(grclass.__init__)
    def __repaired_init__(self, *args, tooltip=None, source=None, original=grclass.__init__, **kwargs):
        if source:
            kwargs["sources"] = [source]

        allowed_kwargs = inspect.signature(original).parameters
        fixed_kwargs = {}
        for k, v in kwargs.items():
            if k in allowed_kwargs:
                fixed_kwargs[k] = v
            else:
                warnings.warn(f"unexpected argument for {grclass.__name__}: {k}", GradioDeprecationWarning,
                              stacklevel=2)

        original(self, *args, **fixed_kwargs)

        self.webui_tooltip = tooltip

        for event in self.EVENTS:
            replaced_event = getattr(self, str(event))
            fun = EventWrapper(replaced_event)
            setattr(self, str(event), fun)

    grclass.__init__ = __repaired_init__
    grclass.update = gr.update


for component in set(gr.components.__all__ + gr.layouts.__all__):
    repair(getattr(gr, component, None))


# mirrors modules/ui_components.py @ dfdcbab: InputAccordionImpl (a hidden gr.Checkbox + gr.Accordion)
class InputAccordionImpl(gr.Checkbox):
    """A gr.Accordion that can be used as an input - returns True if open, False if closed.

    Actually just a hidden checkbox, but creates an accordion that follows and is followed by the state of the checkbox.
    """

    webui_do_not_create_gradio_pyi_thank_you = True

    global_index = 0

    @wraps(gr.Checkbox.__init__)
    def __init__(self, value=None, setup=False, **kwargs):
        if not setup:
            super().__init__(value=value, **kwargs)
            return

        self.accordion_id = kwargs.get("elem_id")
        if self.accordion_id is None:
            self.accordion_id = f"input-accordion-{InputAccordionImpl.global_index}"
            InputAccordionImpl.global_index += 1

        kwargs_checkbox = {
            **kwargs,
            "elem_id": f"{self.accordion_id}-checkbox",
            "visible": False,
        }
        super().__init__(value=value, **kwargs_checkbox)

        self.change(fn=None, _js='function(checked){ inputAccordionChecked("' + self.accordion_id + '", checked); }',
                    inputs=[self])

        kwargs_accordion = {
            **kwargs,
            "elem_id": self.accordion_id,
            "label": kwargs.get("label", "Accordion"),
            "elem_classes": ["input-accordion"],
            "open": value,
        }

        self.accordion = gr.Accordion(**kwargs_accordion)

    def extra(self):
        """Allows you to put something into the label of the accordion (`with acc.extra(): ...`)."""

        return gr.Column(elem_id=self.accordion_id + "-extra", elem_classes="input-accordion-extra", min_width=0)

    def __enter__(self):
        self.accordion.__enter__()
        return self

    def __exit__(self, exc_type, exc_val, exc_tb):
        self.accordion.__exit__(exc_type, exc_val, exc_tb)

    def get_block_name(self):
        return "checkbox"


# mirrors modules/ui_components.py @ dfdcbab: InputAccordion (a function in Forge, a class in A1111)
def InputAccordion(value=None, **kwargs):
    return InputAccordionImpl(value=value, setup=True, **kwargs)
