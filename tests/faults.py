"""Faults injected where S-CFG's work happens during a generation, for tests/test_safety_*.py: the capture's stash
(a block's q/k handed over: ``AttentionCapture._complete`` runs inside the stash's guard), the processing of the
stashed layers (``_layer_maps``), the fold of a U-Net call's maps (``_CallMaps.fold``, at the end of the call),
the step's maps (``AttentionCapture.stacked_masks``) and the rate (``masks.rate_deviation`` as
``ScfgRun.deviations`` calls it).

Each site is named by the class (or module) and attribute that holds it, as ``scfg_ext.capture`` exports the class:
patching ``AttentionCapture`` shadows the method wherever the package defines it (its stash and processing
methods come from mixins in ``capture/stash.py`` and ``capture/processing.py``)."""

from __future__ import annotations

import importlib

import torch

import scfg_ext.capture

SITES = {  # site -> (owner's name, attribute)
    "stash": ("AttentionCapture", "_complete"),
    "processing": ("AttentionCapture", "_layer_maps"),
    "fold": ("_CallMaps", "fold"),
    "masks": ("AttentionCapture", "stacked_masks"),
    "rate": ("scfg_ext.masks", "rate_deviation"),
}
KINDS = {
    "RuntimeError": lambda: RuntimeError("boom (test)"),
    "OutOfMemoryError": lambda: torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2 GiB (test)"),
    "MemoryError": lambda: MemoryError("no memory left (test)"),
}


def owner(name: str):
    """The module named ``name``, or the class of that name that ``scfg_ext.capture`` exports."""
    if "." in name:
        return importlib.import_module(name)
    return getattr(scfg_ext.capture, name)


def inject(monkeypatch, site: str, error: BaseException) -> list:
    """Make ``site`` raise ``error`` every time it runs; returns the list of its calls (one entry each)."""
    holder, attribute = SITES[site]
    target = owner(holder)
    calls = []

    def raising(*args, **kwargs):
        calls.append(1)
        raise error

    monkeypatch.setattr(target, attribute, raising)
    return calls


def kinds_for(sites, start: int = 0) -> list[tuple[str, str]]:
    """(site, kind) pairs with every site once and the kinds taken in turn from the ``start``-th (a share of the
    full product, for the routes that cost more)."""
    kinds = list(KINDS)
    return [(site, kinds[(start + i) % len(kinds)]) for i, site in enumerate(sites)]
