"""Stand-in for Forge ``backend/sampling/condition.py`` @ dfdcbab: the cross-attention condition's batching
rule (contexts of different lengths are repeated to their least common multiple, not batched past 4x) and
the compilation of WebUI conds into Forge's per-entry dicts (one entry per ``AND`` sub-prompt)."""

import math

import torch


# mirrors condition.py:5-10
def repeat_to_batch_size(tensor, batch_size):
    if tensor.shape[0] > batch_size:
        return tensor[:batch_size]
    elif tensor.shape[0] < batch_size:
        return tensor.repeat([math.ceil(batch_size / tensor.shape[0])] + [1] * (len(tensor.shape) - 1))[:batch_size]
    return tensor


def lcm(a, b):
    return abs(a * b) // math.gcd(a, b)


# mirrors condition.py:17-35 (Condition) and :46-72 (ConditionCrossAttn), merged: only cross-attention here
class ConditionCrossAttn:
    def __init__(self, cond):
        self.cond = cond

    def process_cond(self, batch_size, device, **kwargs):
        return ConditionCrossAttn(repeat_to_batch_size(self.cond, batch_size).to(device))

    def can_concat(self, other):
        s1 = self.cond.shape
        s2 = other.cond.shape
        if s1 != s2:
            if s1[0] != s2[0] or s1[2] != s2[2]:
                return False

            mult_min = lcm(s1[1], s2[1])
            diff = mult_min // min(s1[1], s2[1])
            if diff > 4:
                return False
        return True

    def concat(self, others):
        conds = [self.cond]
        crossattn_max_len = self.cond.shape[1]
        for x in others:
            c = x.cond
            crossattn_max_len = lcm(crossattn_max_len, c.shape[1])
            conds.append(c)

        out = []
        for c in conds:
            if c.shape[1] < crossattn_max_len:
                c = c.repeat(1, crossattn_max_len // c.shape[1], 1)
            out.append(c)
        return torch.cat(out)


# mirrors condition.py:89-100 (the tensor case: SD1/SD2)
def compile_conditions(cond):
    if cond is None:
        return None
    return [dict(cross_attn=cond, model_conds=dict(c_crossattn=ConditionCrossAttn(cond)))]


# mirrors condition.py:121-142
def compile_weighted_conditions(cond, weights):
    transposed = list(map(list, zip(*weights)))
    results = []

    for cond_pre in transposed:
        current_indices = []
        current_weight = 0
        for i, w in cond_pre:
            current_indices.append(i)
            current_weight = w

        feed = cond[current_indices]

        h = compile_conditions(feed)
        h[0]['strength'] = current_weight
        results += h

    return results
