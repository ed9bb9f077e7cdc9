"""Stand-in for modules/patches.py @ A1111 v1.10.1 (82a973c): patch/undo/original, same semantics."""

from collections import defaultdict


# mirrors modules/patches.py @ v1.10.1 (82a973c): patch(key, obj, field, replacement) -> original
def patch(key, obj, field, replacement):
    patch_key = (obj, field)
    if patch_key in originals[key]:
        raise RuntimeError(f"patch for {field} is already applied")

    original_func = getattr(obj, field)
    originals[key][patch_key] = original_func

    setattr(obj, field, replacement)

    return original_func


# mirrors modules/patches.py @ v1.10.1 (82a973c): undo(key, obj, field)
def undo(key, obj, field):
    patch_key = (obj, field)

    if patch_key not in originals[key]:
        raise RuntimeError(f"there is no patch for {field} to undo")

    original_func = originals[key].pop(patch_key)
    setattr(obj, field, original_func)

    return None


# mirrors modules/patches.py @ v1.10.1 (82a973c): original(key, obj, field)
def original(key, obj, field):
    patch_key = (obj, field)

    return originals[key].get(patch_key, None)


originals = defaultdict(dict)
