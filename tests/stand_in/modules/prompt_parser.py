"""Stand-in for modules/prompt_parser.py @ A1111 v1.10.1 (82a973c).

Kept: the conditioning data structures and their reconstruction (what CFGDenoiser.forward
calls every step), plus get_multicond_prompt_list (AND splitting) and a
get_learned_conditioning / get_multicond_learned_conditioning that take the
prompt schedules as data.
Trimmed: the lark schedule grammar (get_learned_conditioning_prompt_schedules) and
parse_prompt_attention. Tests build conds directly from tensors.
"""

from __future__ import annotations

import re
from collections import namedtuple

import torch

# mirrors modules/prompt_parser.py @ v1.10.1 (82a973c): ScheduledPromptConditioning(end_at_step, cond)
ScheduledPromptConditioning = namedtuple("ScheduledPromptConditioning", ["end_at_step", "cond"])


# mirrors modules/prompt_parser.py @ v1.10.1 (82a973c): SdConditioning
class SdConditioning(list):
    def __init__(self, prompts, is_negative_prompt=False, width=None, height=None, copy_from=None):
        super().__init__()
        self.extend(prompts)

        if copy_from is None:
            copy_from = prompts

        self.is_negative_prompt = is_negative_prompt or getattr(copy_from, "is_negative_prompt", False)
        self.width = width or getattr(copy_from, "width", None)
        self.height = height or getattr(copy_from, "height", None)


# mirrors modules/prompt_parser.py @ v1.10.1 (82a973c): get_learned_conditioning, with the prompt schedules
# passed in (upstream computes them with the lark grammar from `steps`): prompt_schedules[i] = [[end_at_step, text],
#   ...]
def get_learned_conditioning(model, prompts, prompt_schedules):
    res = []
    cache = {}

    for prompt, prompt_schedule in zip(prompts, prompt_schedules):
        cached = cache.get(prompt)
        if cached is not None:
            res.append(cached)
            continue

        texts = SdConditioning([x[1] for x in prompt_schedule], copy_from=prompts)
        conds = model.get_learned_conditioning(texts)

        cond_schedule = []
        for i, (end_at_step, _) in enumerate(prompt_schedule):
            cond = {k: v[i] for k, v in conds.items()} if isinstance(conds, dict) else conds[i]

            cond_schedule.append(ScheduledPromptConditioning(end_at_step, cond))

        cache[prompt] = cond_schedule
        res.append(cond_schedule)

    return res


re_AND = re.compile(r"\bAND\b")
re_weight = re.compile(r"^((?:\s|.)*?)(?:\s*:\s*([-+]?(?:\d+\.?|\d*\.\d+)))?\s*$")


# mirrors modules/prompt_parser.py @ v1.10.1 (82a973c): get_multicond_prompt_list(prompts) -> (res_indexes,
#   flat_prompts, prompt_indexes)
def get_multicond_prompt_list(prompts):
    res_indexes = []

    prompt_indexes = {}
    prompt_flat_list = SdConditioning(prompts)
    prompt_flat_list.clear()

    for prompt in prompts:
        subprompts = re_AND.split(prompt)

        indexes = []
        for subprompt in subprompts:
            match = re_weight.search(subprompt)

            text, weight = match.groups() if match is not None else (subprompt, 1.0)

            weight = float(weight) if weight is not None else 1.0

            index = prompt_indexes.get(text)
            if index is None:
                index = len(prompt_flat_list)
                prompt_flat_list.append(text)
                prompt_indexes[text] = index

            indexes.append((index, weight))

        res_indexes.append(indexes)

    return res_indexes, prompt_flat_list, prompt_indexes


# mirrors modules/prompt_parser.py @ v1.10.1 (82a973c): ComposableScheduledPromptConditioning(schedules, weight=1.0)
class ComposableScheduledPromptConditioning:
    def __init__(self, schedules, weight=1.0):
        self.schedules: list[ScheduledPromptConditioning] = schedules
        self.weight: float = weight


# mirrors modules/prompt_parser.py @ v1.10.1 (82a973c): MulticondLearnedConditioning(shape, batch)
class MulticondLearnedConditioning:
    def __init__(self, shape, batch):
        self.shape: tuple = shape  # the shape field is needed to send this object to DDIM/PLMS
        self.batch: list[list[ComposableScheduledPromptConditioning]] = batch


# mirrors modules/prompt_parser.py @ v1.10.1 (82a973c): get_multicond_learned_conditioning (schedules passed in, see
#   above)
def get_multicond_learned_conditioning(
    model, prompts, prompt_schedules_for_flat_prompts
) -> MulticondLearnedConditioning:
    res_indexes, prompt_flat_list, prompt_indexes = get_multicond_prompt_list(prompts)

    learned_conditioning = get_learned_conditioning(model, prompt_flat_list, prompt_schedules_for_flat_prompts)

    res = []
    for indexes in res_indexes:
        res.append([ComposableScheduledPromptConditioning(learned_conditioning[i], weight) for i, weight in indexes])

    return MulticondLearnedConditioning(shape=(len(prompts),), batch=res)


# mirrors modules/prompt_parser.py @ v1.10.1 (82a973c): DictWithShape (SDXL conds: {"crossattn", "vector"})
class DictWithShape(dict):
    def __init__(self, x, shape=None):
        super().__init__()
        self.update(x)

    @property
    def shape(self):
        return self["crossattn"].shape


# mirrors modules/prompt_parser.py @ v1.10.1 (82a973c): reconstruct_cond_batch(c, current_step)
# picks the first schedule entry with current_step <= end_at_step; if none matches, index 0 (upstream behaviour)
def reconstruct_cond_batch(c: list[list[ScheduledPromptConditioning]], current_step):
    param = c[0][0].cond
    is_dict = isinstance(param, dict)

    if is_dict:
        dict_cond = param
        res = {
            k: torch.zeros((len(c),) + param.shape, device=param.device, dtype=param.dtype)
            for k, param in dict_cond.items()
        }
        res = DictWithShape(res, (len(c),) + dict_cond["crossattn"].shape)
    else:
        res = torch.zeros((len(c),) + param.shape, device=param.device, dtype=param.dtype)

    for i, cond_schedule in enumerate(c):
        target_index = 0
        for current, entry in enumerate(cond_schedule):
            if current_step <= entry.end_at_step:
                target_index = current
                break

        if is_dict:
            for k, param in cond_schedule[target_index].cond.items():
                res[k][i] = param
        else:
            res[i] = cond_schedule[target_index].cond

    return res


# mirrors modules/prompt_parser.py @ v1.10.1 (82a973c): stack_conds(tensors) (pads shorter token lists with their
#   last vector)
def stack_conds(tensors):
    token_count = max([x.shape[0] for x in tensors])
    for i in range(len(tensors)):
        if tensors[i].shape[0] != token_count:
            last_vector = tensors[i][-1:]
            last_vector_repeated = last_vector.repeat([token_count - tensors[i].shape[0], 1])
            tensors[i] = torch.vstack([tensors[i], last_vector_repeated])

    return torch.stack(tensors)


# mirrors modules/prompt_parser.py @ v1.10.1 (82a973c): reconstruct_multicond_batch(c, current_step) -> (conds_list,
#   stacked)
def reconstruct_multicond_batch(c: MulticondLearnedConditioning, current_step):
    param = c.batch[0][0].schedules[0].cond

    tensors = []
    conds_list = []

    for composable_prompts in c.batch:
        conds_for_batch = []

        for composable_prompt in composable_prompts:
            target_index = 0
            for current, entry in enumerate(composable_prompt.schedules):
                if current_step <= entry.end_at_step:
                    target_index = current
                    break

            conds_for_batch.append((len(tensors), composable_prompt.weight))
            tensors.append(composable_prompt.schedules[target_index].cond)

        conds_list.append(conds_for_batch)

    if isinstance(tensors[0], dict):
        keys = list(tensors[0].keys())
        stacked = {k: stack_conds([x[k] for x in tensors]) for k in keys}
        stacked = DictWithShape(stacked, stacked["crossattn"].shape)
    else:
        stacked = stack_conds(tensors).to(device=param.device, dtype=param.dtype)

    return conds_list, stacked
