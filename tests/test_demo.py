"""The demo end to end on a tiny U-Net: real sampler, real capture, one PNG with the four panels."""

import pytest
import torch
from PIL import Image

from scfg_ext import demo
from scfg_ext.capture import CHUNK_TOKENS

TINY = ["--size", "128", "--steps", "3", "--channels", "32", "--res-blocks", "1", "--words", "3", "--no-progress"]


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("demo") / "x.png"
    return demo.main([*TINY, "--out", out]), out


def test_png_has_the_expected_layout(tiny_run):
    result, out = tiny_run
    assert result.out == out and out.is_file()
    panel = demo.panel_side(128 // 8)
    assert panel == 288  # 16x16 latent, nearest x18
    with Image.open(out) as img:
        assert img.format == "PNG" and img.mode == "RGB"
        assert img.size == demo.canvas_size(panel) == (1252, demo.HEADER_H + demo.TITLE_H + 288 + demo.INFO_H
                                                       + demo.FOOTER_H)
        pixels = img.copy()
    plain, scfg, regions, rate = (pixels.crop(box) for box in demo.panel_boxes(panel))
    assert plain.tobytes() != scfg.tobytes()  # the two rendered latents differ
    # the region panel is drawn from the legend's colours only (plus grid lines and the white outline)
    words = 3
    legend = {demo.group_colour(g, words) for g in range(words + 2)}
    cells = {regions.getpixel((x, y)) for x in range(9, panel, 18) for y in range(9, panel, 18)}
    assert cells and cells <= legend
    assert len(set(rate.getdata())) > 1  # a heat map, not a flat fill


def test_latents_differ_and_maps_are_sane(tiny_run):
    result, _ = tiny_run
    assert result.plain.shape == result.scfg.shape == (1, 4, 16, 16)
    assert torch.isfinite(result.plain).all() and torch.isfinite(result.scfg).all()
    assert not torch.allclose(result.plain, result.scfg, rtol=1e-4, atol=1e-4)
    assert result.evaluations == 3 and result.steps_applied == 3  # S-CFG used the maps on every call
    # regions: a one-hot partition of the latent over the 77 tokens
    assert result.regions.shape == (CHUNK_TOKENS, 16, 16)
    assert torch.equal(result.regions.sum(0), torch.ones(16, 16))
    assert set(result.foreground.unique().tolist()) <= {0.0, 1.0}
    # rate: the official clamp [0.8, 3] then <= 15 / 7.5, then a convex smoothing
    assert result.rate.shape == (1, 16, 16)
    assert result.rate.min() >= 0.8 - 1e-6 and result.rate.max() <= 2.0 + 1e-6


def test_same_noise_plain_cfg_is_reproducible(tmp_path, tiny_run):
    """Same seed -> the same plain-CFG latent; so the difference to S-CFG is the guidance, not the noise."""
    result, _ = tiny_run
    again = demo.main([*TINY, "--out", tmp_path / "y.png"])
    assert torch.equal(again.plain, result.plain)
    assert torch.equal(again.scfg, result.scfg)


def test_synthetic_contexts():
    cond, uncond = demo.synthetic_contexts(4, 768, seed=0)
    assert cond.shape == uncond.shape == (1, CHUNK_TOKENS, 768)
    assert torch.equal(cond[0, 0], uncond[0, 0])  # the same <sot> state, as CLIP's causal SOT is
    words = cond[0, 1:5]
    assert torch.linalg.matrix_rank(words) == 4  # distinct words
    assert (cond[0, 5:] == cond[0, 5]).all() and (uncond[0, 1:] == uncond[0, 1]).all()
    assert not torch.equal(cond[0, 5], uncond[0, 1])
    assert [demo.group_label(demo.token_group(i, 4), 4) for i in (0, 1, 4, 5, 76)] == \
        ["<sot>", "w1", "w4", "<eot/pad>", "<eot/pad>"]


@pytest.mark.parametrize("bad", [["--size", "100"], ["--size", "72"], ["--size", "0"], ["--steps", "0"],
                                 ["--channels", "12"], ["--sampler", "ddim"], ["--words", "10"]])
def test_bad_arguments_exit(bad, tmp_path):
    with pytest.raises(SystemExit) as exc:
        demo.main([*bad, "--out", tmp_path / "z.png"])
    assert exc.value.code == 2
    assert not (tmp_path / "z.png").exists()


def test_help_names_the_options(capsys):
    with pytest.raises(SystemExit) as exc:
        demo.main(["--help"])
    assert exc.value.code == 0
    text = capsys.readouterr().out
    for option in ("--size", "--steps", "--seed", "--cfg-scale", "--out", "--sampler", "--channels"):
        assert option in text
