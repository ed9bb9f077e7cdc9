"""Stand-in for scripts/xyz_grid.py @ A1111 v1.10.1 (82a973c).

Load it the way the WebUI does, so that its classes get __module__ == "xyz_grid.py":
    modules.scripts.load_scripts([(webui_root, ".../webui_scripts/xyz_grid.py"), ...])
or modules.script_loading.load_module(path).

Kept: the AxisOption classes, apply_field / apply_override / boolean_choice / format_value* /
do_nothing / format_nothing / str_permutations / csv helpers, the range regexes, a subset of
axis_options (same labels, order and types for the entries kept), Script.ui()'s axis-option
filter and the run()-time value parsing as `process_axis(p, opt, vals, vals_dropdown, csv_mode)`
plus the per-cell copy/apply as `apply_cell(p, axes)`.
Trimmed: options that need models/samplers/VAEs, the grid drawing, the Script UI widgets
beyond the axis dropdowns/values, run().
"""

import csv
import os.path
import re
from copy import copy
from io import StringIO
from itertools import chain, permutations

import gradio as gr
import modules.scripts as scripts
import numpy as np


# mirrors scripts/xyz_grid.py @ v1.10.1 (82a973c): apply_field(field) -> fun(p, x, xs): setattr(p, field, x)
def apply_field(field):
    def fun(p, x, xs):
        setattr(p, field, x)

    return fun


# mirrors scripts/xyz_grid.py @ v1.10.1 (82a973c): apply_prompt (Prompt S/R)
def apply_prompt(p, x, xs):
    if xs[0] not in p.prompt and xs[0] not in p.negative_prompt:
        raise RuntimeError(f"Prompt S/R did not find {xs[0]} in prompt or negative prompt.")

    p.prompt = p.prompt.replace(xs[0], x)
    p.negative_prompt = p.negative_prompt.replace(xs[0], x)


# mirrors scripts/xyz_grid.py @ v1.10.1 (82a973c): confirm_range(min_val, max_val, axis_label)
def confirm_range(min_val, max_val, axis_label):
    def confirm_range_fun(p, xs):
        for x in xs:
            if not (max_val >= x >= min_val):
                raise ValueError(f'{axis_label} value "{x}" out of range [{min_val}, {max_val}]')

    return confirm_range_fun


# mirrors scripts/xyz_grid.py @ v1.10.1 (82a973c): apply_override(field, boolean=False) -> writes p.override_settings
def apply_override(field, boolean: bool = False):
    def fun(p, x, xs):
        if boolean:
            x = x.lower() == "true"
        p.override_settings[field] = x

    return fun


# mirrors scripts/xyz_grid.py @ v1.10.1 (82a973c): boolean_choice(reverse=False)
def boolean_choice(reverse: bool = False):
    def choice():
        return ["False", "True"] if reverse else ["True", "False"]

    return choice


# mirrors scripts/xyz_grid.py @ v1.10.1 (82a973c): format_value_add_label(p, opt, x)
def format_value_add_label(p, opt, x):
    if type(x) is float:
        x = round(x, 8)

    return f"{opt.label}: {x}"


# mirrors scripts/xyz_grid.py @ v1.10.1 (82a973c): format_value(p, opt, x)
def format_value(p, opt, x):
    if type(x) is float:
        x = round(x, 8)
    return x


# mirrors scripts/xyz_grid.py @ v1.10.1 (82a973c): format_value_join_list
def format_value_join_list(p, opt, x):
    return ", ".join(x)


# mirrors scripts/xyz_grid.py @ v1.10.1 (82a973c): do_nothing(p, x, xs)
def do_nothing(p, x, xs):
    pass


# mirrors scripts/xyz_grid.py @ v1.10.1 (82a973c): format_nothing(p, opt, x)
def format_nothing(p, opt, x):
    return ""


# mirrors scripts/xyz_grid.py @ v1.10.1 (82a973c): format_remove_path
def format_remove_path(p, opt, x):
    return os.path.basename(x)


# mirrors scripts/xyz_grid.py @ v1.10.1 (82a973c): str_permutations (a marker type)
def str_permutations(x):
    """dummy function for specifying it in AxisOption's type when you want to get a list of permutations"""
    return x


# mirrors scripts/xyz_grid.py @ v1.10.1 (82a973c): list_to_csv_string / csv_string_to_list_strip
def list_to_csv_string(data_list):
    with StringIO() as o:
        csv.writer(o).writerow(data_list)
        return o.getvalue().strip()


def csv_string_to_list_strip(data_str):
    return list(map(str.strip, chain.from_iterable(csv.reader(StringIO(data_str), skipinitialspace=True))))


# mirrors scripts/xyz_grid.py @ v1.10.1 (82a973c): class AxisOption
class AxisOption:
    def __init__(
        self,
        label,
        type,
        apply,
        format_value=format_value_add_label,
        confirm=None,
        cost=0.0,
        choices=None,
        prepare=None,
    ):
        self.label = label
        self.type = type
        self.apply = apply
        self.format_value = format_value
        self.confirm = confirm
        self.cost = cost
        self.prepare = prepare
        self.choices = choices


# mirrors scripts/xyz_grid.py @ v1.10.1 (82a973c): AxisOptionImg2Img
class AxisOptionImg2Img(AxisOption):
    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.is_img2img = True


# mirrors scripts/xyz_grid.py @ v1.10.1 (82a973c): AxisOptionTxt2Img
class AxisOptionTxt2Img(AxisOption):
    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.is_img2img = False


# mirrors scripts/xyz_grid.py @ v1.10.1 (82a973c): axis_options (the model-free entries, in upstream order;
# "Nothing" first and "Seed" second matter: the UI defaults are current_axis_options[1] / [0])
axis_options = [
    AxisOption("Nothing", str, do_nothing, format_value=format_nothing),
    AxisOption("Seed", int, apply_field("seed")),
    AxisOption("Var. seed", int, apply_field("subseed")),
    AxisOption("Var. strength", float, apply_field("subseed_strength")),
    AxisOption("Steps", int, apply_field("steps")),
    AxisOptionTxt2Img("Hires steps", int, apply_field("hr_second_pass_steps")),
    AxisOption("CFG Scale", float, apply_field("cfg_scale")),
    AxisOptionImg2Img("Image CFG Scale", float, apply_field("image_cfg_scale")),
    AxisOption("Prompt S/R", str, apply_prompt, format_value=format_value),
    AxisOption("Negative Guidance minimum sigma", float, apply_field("s_min_uncond")),
    AxisOption("Eta", float, apply_field("eta")),
    AxisOption("Clip skip", int, apply_override("CLIP_stop_at_last_layers")),
    AxisOption("Denoising", float, apply_field("denoising_strength")),
    AxisOption(
        "Always discard next-to-last sigma",
        str,
        apply_override("always_discard_next_to_last_sigma", boolean=True),
        choices=boolean_choice(reverse=True),
    ),
]

re_range = re.compile(r"\s*([+-]?\s*\d+)\s*-\s*([+-]?\s*\d+)(?:\s*\(([+-]\d+)\s*\))?\s*")
re_range_float = re.compile(
    r"\s*([+-]?\s*\d+(?:.\d*)?)\s*-\s*([+-]?\s*\d+(?:.\d*)?)(?:\s*\(([+-]\d+(?:.\d*)?)\s*\))?\s*"
)

re_range_count = re.compile(r"\s*([+-]?\s*\d+)\s*-\s*([+-]?\s*\d+)(?:\s*\[(\d+)\s*])?\s*")
re_range_count_float = re.compile(
    r"\s*([+-]?\s*\d+(?:.\d*)?)\s*-\s*([+-]?\s*\d+(?:.\d*)?)(?:\s*\[(\d+(?:.\d*)?)\s*])?\s*"
)


# mirrors scripts/xyz_grid.py @ v1.10.1 (82a973c): Script.run.<locals>.process_axis, plus run()'s
# "dropdown values -> csv string" step. No check against opt.choices happens upstream: only opt.confirm.
def process_axis(p, opt, vals, vals_dropdown, csv_mode=False):
    if opt.choices is not None and not csv_mode:
        vals = list_to_csv_string(vals_dropdown)

    if opt.label == "Nothing":
        return [0]

    if opt.choices is not None and not csv_mode:
        valslist = vals_dropdown
    elif opt.prepare is not None:
        valslist = opt.prepare(vals)
    else:
        valslist = csv_string_to_list_strip(vals)

    if opt.type is int:
        valslist_ext = []

        for val in valslist:
            if val.strip() == "":
                continue
            m = re_range.fullmatch(val)
            mc = re_range_count.fullmatch(val)
            if m is not None:
                start = int(m.group(1))
                end = int(m.group(2)) + 1
                step = int(m.group(3)) if m.group(3) is not None else 1

                valslist_ext += list(range(start, end, step))
            elif mc is not None:
                start = int(mc.group(1))
                end = int(mc.group(2))
                num = int(mc.group(3)) if mc.group(3) is not None else 1

                valslist_ext += [int(x) for x in np.linspace(start=start, stop=end, num=num).tolist()]
            else:
                valslist_ext.append(val)

        valslist = valslist_ext
    elif opt.type is float:
        valslist_ext = []

        for val in valslist:
            if val.strip() == "":
                continue
            m = re_range_float.fullmatch(val)
            mc = re_range_count_float.fullmatch(val)
            if m is not None:
                start = float(m.group(1))
                end = float(m.group(2))
                step = float(m.group(3)) if m.group(3) is not None else 1

                valslist_ext += np.arange(start, end + step, step).tolist()
            elif mc is not None:
                start = float(mc.group(1))
                end = float(mc.group(2))
                num = int(mc.group(3)) if mc.group(3) is not None else 1

                valslist_ext += np.linspace(start=start, stop=end, num=num).tolist()
            else:
                valslist_ext.append(val)

        valslist = valslist_ext
    elif opt.type is str_permutations:
        valslist = list(permutations(valslist))

    valslist = [opt.type(x) for x in valslist]

    # Confirm options are valid before starting
    if opt.confirm:
        opt.confirm(p, valslist)

    return valslist


# mirrors scripts/xyz_grid.py @ v1.10.1 (82a973c): Script.run.<locals>.cell, the part before process_images:
# pc = copy(p) (shallow: pc.extra_generation_params, pc.comments ... are p's own dicts), pc.styles = pc.styles[:],
# then x_opt.apply(pc, x, xs), y_opt..., z_opt... . axes: [(opt, value, all_values), ...]
def apply_cell(p, axes):
    pc = copy(p)
    pc.styles = pc.styles[:]
    for opt, x, xs in axes:
        opt.apply(pc, x, xs)
    return pc


# mirrors scripts/xyz_grid.py @ v1.10.1 (82a973c): class Script (title, axis filter in ui(); UI reduced to the
# three type dropdowns + value boxes; run() trimmed)
class Script(scripts.Script):
    def title(self):
        return "X/Y/Z plot"

    def ui(self, is_img2img):
        self.current_axis_options = [x for x in axis_options if type(x) is AxisOption or x.is_img2img == is_img2img]

        labels = [x.label for x in self.current_axis_options]
        x_type = gr.Dropdown(
            label="X type", choices=labels, value=labels[1], type="index", elem_id=self.elem_id("x_type")
        )
        x_values = gr.Textbox(label="X values", lines=1, elem_id=self.elem_id("x_values"))
        y_type = gr.Dropdown(
            label="Y type", choices=labels, value=labels[0], type="index", elem_id=self.elem_id("y_type")
        )
        y_values = gr.Textbox(label="Y values", lines=1, elem_id=self.elem_id("y_values"))
        z_type = gr.Dropdown(
            label="Z type", choices=labels, value=labels[0], type="index", elem_id=self.elem_id("z_type")
        )
        z_values = gr.Textbox(label="Z values", lines=1, elem_id=self.elem_id("z_values"))

        return [x_type, x_values, y_type, y_values, z_type, z_values]
