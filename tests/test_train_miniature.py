"""bench/train_miniature.py: a run continued from its saved state ends where the uninterrupted run ends, bit for
bit; the grounding's word-share loss on attention of known values."""

import importlib.util
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def train():
    spec = importlib.util.spec_from_file_location("train_miniature", ROOT / "bench" / "train_miniature.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


# a tiny DiT run: 4 steps of batch 2 with the grounding losses, so every part of the state is exercised
RUN = ["--arch", "anima", "--steps", "4", "--batch", "2", "--warmup", "2", "--grounding", "0.1", "--threads", "1",
       "--log-every", "1", "--seed", "3"]


def test_resumed_run_equals_the_uninterrupted_one(train, tmp_path):
    threads = torch.get_num_threads()
    try:
        train.main([*RUN, "--out", str(tmp_path / "whole.safetensors"), "--state", str(tmp_path / "whole.pt")])
        train.main([*RUN, "--out", str(tmp_path / "piece.safetensors"), "--state", str(tmp_path / "piece.pt"),
                    "--stop-at", "2"])
        halfway = load_file(str(tmp_path / "piece.safetensors"))
        assert torch.load(tmp_path / "piece.pt", weights_only=False)["step"] == 2
        train.main([*RUN, "--out", str(tmp_path / "piece.safetensors"), "--resume", str(tmp_path / "piece.pt")])
    finally:
        torch.set_num_threads(threads)
    whole = torch.load(tmp_path / "whole.pt", weights_only=False)
    resumed = torch.load(tmp_path / "piece.pt", weights_only=False)
    assert resumed["step"] == whole["step"] == 4
    for name in ("net", "ema_net", "text", "ema_text"):
        for key, value in whole["modules"][name].items():
            assert torch.equal(resumed["modules"][name][key], value), (name, key)
    assert torch.equal(resumed["generator"], whole["generator"])
    saved, again = load_file(str(tmp_path / "whole.safetensors")), load_file(str(tmp_path / "piece.safetensors"))
    assert all(torch.equal(saved[k], again[k]) for k in saved)
    # the pieces trained: the weights moved between step 2 and step 4
    assert any(not torch.equal(halfway[k], again[k]) for k in saved)


def test_resume_refuses_other_arguments(train, tmp_path):
    train.main([*RUN, "--out", str(tmp_path / "a.safetensors"), "--state", str(tmp_path / "a.pt"), "--stop-at", "1"])
    changed = [*RUN[:3], "8", *RUN[4:]]  # --steps 8: another LR schedule
    with pytest.raises(SystemExit, match="--steps"):
        train.main([*changed, "--out", str(tmp_path / "a.safetensors"), "--resume", str(tmp_path / "a.pt")])


def test_word_share_loss_asks_each_named_word_for_its_share(train):
    """Uniform cross-attention (zero queries): every token has 1/77 of every cell. A target share of 1/77 is
    met (loss 0); 2/77 is half met at every named word's cells (loss 0.5)."""
    from scfg_ext.miniature import world as W

    scenes = [W.make_scene(W.scene_seed(5, i)) for i in range(2)]
    losses = {}
    for target in (1 / 77, 2 / 77):
        grounding = train.Grounding.__new__(train.Grounding)
        grounding.start_token, grounding.word_share = True, target
        grounding.layers = {"attn2": ["cross"], "attn1": []}
        grounding.seen = {"cross": {"q": torch.zeros(2, 64, 8), "k": torch.randn(2, 77, 8), "heads": 2}}
        parts = grounding.loss(*grounding.targets(scenes, 77), torch.ones(2), torch.ones(2, dtype=torch.bool))
        losses[target] = float(parts["share"])
    assert losses[1 / 77] == pytest.approx(0, abs=1e-6)
    assert losses[2 / 77] == pytest.approx(0.5, abs=1e-6)


def test_loss_weights_floor_the_clean_image_error(train):
    """An eps error is the clean-image error divided by sigma, so plain eps MSE weighs the clean image by the SNR;
    ``--x0-floor f`` raises that weight to at least ``f`` and leaves the levels above it alone."""
    args = train.parser().parse_args(["--x0-floor", "0.5"])
    signal = torch.tensor([0.9, 0.5, 0.2, 0.01])  # SNR 9, 1, 0.25, 1/99
    snr = signal / (1 - signal)
    weight = train.loss_weight(signal, args)
    assert torch.allclose(weight, torch.tensor([1.0, 1.0, 2.0, 49.5]))
    assert torch.all(weight * snr >= 0.5 - 1e-6)  # the clean image's weight
    plain = train.loss_weight(signal, train.parser().parse_args([]))
    assert torch.equal(plain, torch.ones(4))
    min_snr = train.loss_weight(signal, train.parser().parse_args(["--min-snr", "5", "--x0-floor", "0.5"]))
    assert torch.allclose(min_snr, torch.tensor([5 / 9, 1.0, 2.0, 49.5]))


def test_a_state_from_before_an_argument_existed_resumes_with_its_default(train, tmp_path):
    train.main([*RUN, "--out", str(tmp_path / "a.safetensors"), "--state", str(tmp_path / "a.pt"), "--stop-at", "1"])
    state = torch.load(tmp_path / "a.pt", weights_only=False)
    del state["args"]["x0_floor"]
    torch.save(state, tmp_path / "a.pt")
    with pytest.raises(SystemExit, match=r"--x0-floor \(0.0 there, 0.3 here\)"):
        train.main([*RUN, "--x0-floor", "0.3", "--out", str(tmp_path / "a.safetensors"), "--resume",
                    str(tmp_path / "a.pt")])
    train.main([*RUN, "--out", str(tmp_path / "a.safetensors"), "--resume", str(tmp_path / "a.pt"), "--stop-at", "2"])
    assert torch.load(tmp_path / "a.pt", weights_only=False)["step"] == 2
