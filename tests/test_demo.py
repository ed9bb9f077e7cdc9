"""The demo end to end on the trained miniature model: real sampler, real capture, one PNG with a row per prompt."""

import pytest
import torch
from PIL import Image

from scfg_ext import demo
from scfg_ext.capture import CHUNK_TOKENS, Cond
from scfg_ext.miniature import world as W

QUICK = ["--steps", "6", "--prompt", "a red circle and a blue square on grey", "--prompt", "a green triangle"]


@pytest.fixture(scope="module")
def quick_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("demo") / "x.png"
    return demo.main([*QUICK, "--out", out]), out


def test_png_shows_a_row_per_prompt(quick_run):
    result, out = quick_run
    assert result.out == out and out.is_file()
    with Image.open(out) as img:
        assert img.format == "PNG" and img.mode == "RGB"
        assert img.width == demo.column_left(len(demo.COLUMNS)) - demo.GAP + demo.MARGIN
        pixels = img.copy()
    assert pixels.height > demo.HEADER_H + 2 * (demo.PROMPT_H + demo.PANEL)
    # the plain and S-CFG panels of the first row are the two results, upscaled
    top = demo.HEADER_H + demo.PROMPT_H
    for column, latents in ((1, result.plain), (2, result.scfg)):
        left = demo.column_left(column)
        panel = pixels.crop((left, top, left + demo.PANEL, top + demo.PANEL))
        assert panel.tobytes() == demo.to_image(demo.MM.to_rgb(latents[:1])[0]).tobytes()


def test_results_and_maps_are_sane(quick_run):
    result, _ = quick_run
    assert result.plain.shape == result.scfg.shape == (2, 4, W.SIZE, W.SIZE)
    assert torch.isfinite(result.plain).all() and torch.isfinite(result.scfg).all()
    assert not torch.allclose(result.plain, result.scfg, atol=1e-3)
    assert result.steps_applied == 6  # S-CFG used the maps on every step
    for row in range(2):
        regions = result.maps.regions[Cond(row)]
        assert regions.shape == (CHUNK_TOKENS, W.SIZE, W.SIZE)
        assert torch.equal(regions.sum(0), torch.ones(W.SIZE, W.SIZE))  # a one-hot partition
        rate = result.maps.rate[Cond(row)]
        assert rate.min() >= 0.8 - 1e-6 and rate.max() <= 2.0 + 1e-6  # [0.8, 3] then <= 15 / 7.5
    assert [len(v) for v in result.ious] == [2, 1] and all(0 <= v <= 1 for row in result.ious for v in row)
    assert result.scenes == [None, None]


def test_same_noise_is_reproducible(tmp_path, quick_run):
    """Same seed -> the same results; so the difference between the two is the guidance, not the noise."""
    result, _ = quick_run
    again = demo.main([*QUICK, "--out", tmp_path / "y.png"])
    assert torch.equal(again.plain, result.plain) and torch.equal(again.scfg, result.scfg)


@pytest.mark.parametrize("bad", [["--steps", "0"], ["--prompt", "a purple horse"], ["--prompt", "red circle"]])
def test_bad_arguments_exit(bad, tmp_path, capsys):
    with pytest.raises(SystemExit) as exc:
        demo.main([*bad, "--out", tmp_path / "z.png"])
    assert exc.value.code == 2
    assert not (tmp_path / "z.png").exists()


def test_help_names_the_options(capsys):
    with pytest.raises(SystemExit) as exc:
        demo.main(["--help"])
    assert exc.value.code == 0
    text = capsys.readouterr().out
    for option in ("--prompt", "--steps", "--seed", "--cfg-scale", "--out", "--weights"):
        assert option in text


def test_default_rows_are_the_first_scenes_of_the_evaluation_stream():
    assert list(demo.SCENES) == [0, 1, 2, 3]


def test_verdict_lines_come_from_the_record_of_the_loaded_weights(tmp_path):
    record = {"weights_sha256": "abc", "commit": "1234567", "command": "bench/quality.py --tables V", "n": 200,
              "cpu_minutes": 9.5,
              "cfg": {cfg: {"accuracy": {"plain": 0.10, "scfg": 0.05, "diff": -0.05, "low": -0.09, "high": -0.015,
                                         "only_plain": 12, "only_scfg": 2, "mcnemar_p": 0.013},
                            "all_colours": {"plain": 0.7, "scfg": 0.55, "diff": -0.15, "low": -0.2, "high": -0.1,
                                            "only_plain": 30, "only_scfg": 4, "mcnemar_p": 6e-6},
                            "colour_scene": {"plain": 0.5, "scfg": 0.4, "diff": -0.1, "low": -0.16, "high": -0.04,
                                             "only_plain": 30, "only_scfg": 10, "mcnemar_p": 0.002}}
                      for cfg in ("3", "7.5", "12")}}
    path = tmp_path / "verdict.json"
    path.write_text(demo.json.dumps(record))
    lines = demo.verdict_lines("abc", path)
    assert "200 held-out scenes" in lines[0] and "1234567" in lines[0]
    assert lines[1].startswith("checker accuracy CFG 7.5: plain 10%, S-CFG 5% (-5.0 pt, 95% CI [-9.0, -1.5]")
    assert "CFG 12:" in lines[1] and "CFG 3:" not in lines[1]
    assert lines[2].startswith("all prompted colours present CFG 7.5: plain 70%, S-CFG 55% (-15.0 pt")
    assert "plain 50%, S-CFG 40%" in lines[3]
    assert demo.verdict_lines("other weights", path) is None  # never another model's figures
    assert demo.verdict_lines("abc", tmp_path / "missing.json") is None
