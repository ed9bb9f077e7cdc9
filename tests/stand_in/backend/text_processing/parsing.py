"""Stand-in for Forge Neo ``backend/text_processing/parsing.py`` at the fork nolanlane/sd-webui-forge-classic @
6e1e0d5: ``parse_prompt_attention(text, emphasis)`` -> ``[[text, weight], ...]``, the prompt's parts in order
with their weights (``(text:1.2)``, ``(text)`` = 1.1), neighbours of equal weight merged, ``[["", 1.0]]`` for
an empty text. Trimmed: ``[text]``, escapes, nesting, ``BREAK`` and the "None" emphasis."""

import re

GROUP = re.compile(r"\(([^()]*?)(?::\s*([+-]?[.\d]+)\s*)?\)")


def parse_prompt_attention(text, emphasis):
    res, at = [], 0
    for m in GROUP.finditer(text):
        res += [[text[at:m.start()], 1.0]] if m.start() > at else []
        res.append([m.group(1), float(m.group(2)) if m.group(2) else 1.1])
        at = m.end()
    res += [[text[at:], 1.0]] if at < len(text) else []
    merged = []
    for part in res:
        if merged and merged[-1][1] == part[1]:
            merged[-1][0] += part[0]
        else:
            merged.append(part)
    return merged or [["", 1.0]]
