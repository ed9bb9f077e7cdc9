"""mirrors modules/images.py @ v1.10.1 (82a973c): ``save_image`` (same signature, :624). Nothing is written:
each call is recorded in ``saved`` (the image and the arguments) for assertions."""

from __future__ import annotations

saved: list[dict] = []


def save_image(image, path, basename, seed=None, prompt=None, extension='png', info=None, short_filename=False,
               no_prompt=False, grid=False, pnginfo_section_name='parameters', p=None, existing_info=None,
               forced_filename=None, suffix="", save_to_dirs=None):
    saved.append(dict(image=image, path=path, basename=basename, seed=seed, prompt=prompt, extension=extension,
                      info=info, p=p, suffix=suffix))
    return f"{path}/{len(saved):05d}-{seed}{suffix}.{extension}", None
