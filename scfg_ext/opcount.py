"""Counting what a piece of torch code costs a GPU step, machine-independently: the aten operations it
dispatches, sorted into kernels, views and host syncs (``OpKinds``). Pure torch and no package imports, so that
``bench/capture_cost.py`` can load it by path to measure any version of the package; the tests use it too."""

from __future__ import annotations

import torch
from torch.utils._python_dispatch import TorchDispatchMode

# operations that launch no kernel although their schema does not mark the result as an alias: allocations
# (``torch.empty``: the caching allocator, no kernel) and ``_unsafe_view`` (a reshape's view of a fresh copy)
NO_KERNEL = frozenset(("aten::empty", "aten::empty_strided", "aten::_unsafe_view"))


# a tensor made from Python data (``torch.tensor``): on a GPU a blocking copy from the host
HOST_DATA = frozenset((torch.ops.aten.lift_fresh.default,))


def op_kind(func) -> str:
    """What an aten operation costs a GPU step: ``"sync"`` (the host waits for the device: a Python scalar read
    off a tensor, ``.item()``/``.tolist()``/``bool(tensor)`` all go through ``_local_scalar_dense``, or an output
    whose shape depends on the data, e.g. boolean indexing's ``nonzero``: the schema's tags
    ``data_dependent_output``/``dynamic_output_shape``; or ``HOST_DATA``); ``"view"`` (every result is a
    read-only alias of an input, ``Tensor(a)`` in the schema: views, ``detach``, ``split``); ``"none"`` (metadata
    such as ``sym_size``, other non-tensor results, and ``NO_KERNEL``); else ``"launch"``: a kernel (in-place and
    ``out=`` variants included: ``Tensor(a!)``)."""
    tags = func.tags
    if torch.Tag.data_dependent_output in tags or torch.Tag.dynamic_output_shape in tags or func in HOST_DATA:
        return "sync"
    returns = func._schema.returns
    if returns and all(r.alias_info is not None and not r.alias_info.is_write for r in returns):
        return "view"
    if func._schema.name in NO_KERNEL or not any("Tensor" in str(r.type) for r in returns):
        return "none"
    return "launch"


class OpKinds(TorchDispatchMode):
    """Counts the aten operations dispatched inside it by ``op_kind`` (``counts``; ``ops``: all of them) and
    names the syncs (``syncs``). On the meta device a scalar read returns 1 instead of failing, so that
    shape-only runs count the syncs too."""

    def __init__(self):
        super().__init__()
        self.counts = {"launch": 0, "view": 0, "none": 0, "sync": 0}
        self.syncs: list[str] = []

    @property
    def ops(self) -> int:
        return sum(self.counts.values())

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kind = op_kind(func)
        self.counts[kind] += 1
        if kind == "sync":
            self.syncs.append(str(func))
            if func is torch.ops.aten._local_scalar_dense.default and args[0].device.type == "meta":
                return 1  # "true", "finite", a valid index: the path a real run takes
        return func(*args, **(kwargs or {}))
