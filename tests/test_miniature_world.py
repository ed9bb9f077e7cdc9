"""The miniature world (scenes, masks, captions, checker) and the miniature model's tokenizer, text encoder,
latent map and weights file format. No trained weights are needed."""

import hashlib
import itertools

import numpy as np
import pytest
import torch

from scfg_ext.miniature import model as MM
from scfg_ext.miniature import world as W
from scfg_ext.weights import context_words, parse_weights, token_weights

CAPTION_WORDS = ["a", "red", "circle", "and", "a", "blue", "square", "on", "grey"]


def pixels(scene: W.Scene) -> bytes:
    return (scene.render() * 255).round().to(torch.uint8).numpy().tobytes()


# ------------------------------------------------------------------------------------------------------
# scenes


def test_scenes_are_deterministic_and_pinned():
    a, b = W.make_scene(W.scene_seed(3, 17)), W.make_scene(W.scene_seed(3, 17))
    assert a == b and pixels(a) == pixels(b)
    assert W.make_scene(W.scene_seed(3, 18)) != a
    # pinned: the same scenes on any machine and Python version (random.Random.random() only)
    first = W.make_scene(W.scene_seed(0, 0))
    assert first.caption == "a yellow square and a green square and a red triangle on black"
    assert hashlib.sha256(pixels(first)).hexdigest() == \
        "0216509aa8832095d7e1f2f09ff50d9e6fc8f72c797eb85743f81fb53a4fcb18"
    h = hashlib.sha256()
    for s in W.scenes(7, 50):
        h.update(s.caption.encode())
        h.update(pixels(s))
    assert h.hexdigest() == "07c20d510d5759e13ea0cbf387c3a4e6758f8319cd0691887874083798f7ce5b"


def test_scene_statistics():
    scenes = list(W.scenes(1, 300))
    counts = {n: sum(len(s.objects) == n for s in scenes) for n in (1, 2, 3)}
    assert all(c > 60 for c in counts.values()), counts
    assert {s.ground for s in scenes} == set(W.GROUNDS)
    assert 0.35 < np.mean([s.mention_ground for s in scenes]) < 0.65
    for s in scenes:
        colours = [o.colour for o in s.objects]
        assert len(set(colours)) == len(colours)
        lo, hi = W.SIZE_RANGE[len(s.objects)]
        for o in s.objects:
            assert lo <= o.size <= hi and o.shape in W.SHAPES
            x0, y0, x1, y1 = o.box()
            assert x0 >= W.MARGIN and y0 >= W.MARGIN and x1 <= W.SIZE - W.MARGIN and y1 <= W.SIZE - W.MARGIN
        for p, q in itertools.combinations(s.objects, 2):
            assert W._apart(p.box(), q.box(), W.GAP)


def test_palette_is_far_apart():
    palette = np.array([*W.COLOURS.values(), *W.GROUNDS.values()]) / 255
    assert min(np.linalg.norm(a - b) for a, b in itertools.combinations(palette, 2)) > 0.45
    assert not set(W.COLOURS) & set(W.GROUNDS)


def test_masks_are_exact_disjoint_and_match_the_image():
    for s in W.scenes(2, 40):
        masks = s.masks()
        assert masks.shape == (len(s.objects) + 1, W.SIZE, W.SIZE) and masks.dtype == torch.bool
        assert (masks.sum(0) == 1).all()  # disjoint, cover every pixel
        img = s.render()
        colours = [W.COLOURS[o.colour] for o in s.objects] + [W.GROUNDS[s.ground]]
        for m, c in zip(masks, colours, strict=True):
            expected = torch.tensor(c, dtype=torch.float32)[:, None] / 255
            assert m.any()
            assert torch.equal(img[:, m], expected.expand(3, int(m.sum())))
        for o, m in zip(s.objects, masks[:-1], strict=True):
            ys, xs = torch.nonzero(m, as_tuple=True)
            x0, y0, x1, y1 = o.box()
            assert xs.min() >= x0 and xs.max() < x1 and ys.min() >= y0 and ys.max() < y1
            assert int(m.sum()) == int(o.mask().sum())  # nothing occluded with the default gap


def test_occlusion_keeps_masks_disjoint():
    a = W.Obj("red", "square", 4, 4, 14)
    b = W.Obj("blue", "circle", 10, 10, 14)
    s = W.Scene((a, b), "grey")
    masks = s.masks()
    assert (masks.sum(0) == 1).all()
    assert int(masks[1].sum()) == int(b.mask().sum())  # the later object is whole
    assert int(masks[0].sum()) < int(a.mask().sum())  # the earlier one is what remains visible
    assert not (masks[0] & b.mask()).any()


def test_shapes_fill_their_boxes_as_expected():
    for size in (10, 14, 18):
        area = {sh: int(W.Obj("red", sh, 2, 2, size).mask().sum()) for sh in W.SHAPES}
        assert area["square"] == size * size
        assert 0.7 * size * size < area["circle"] < 0.9 * size * size
        assert 0.4 * size * size < area["triangle"] < 0.65 * size * size


def test_captions_and_word_targets():
    s = W.Scene((W.Obj("red", "circle", 1, 1, 12), W.Obj("blue", "square", 18, 18, 12)), "grey", True)
    assert s.caption == "a red circle and a blue square on grey"
    assert s.word_targets() == [None, 0, 0, None, None, 1, 1, None, 2]
    assert W.parse_caption(s.caption) == ([("red", "circle"), ("blue", "square")], "grey")
    assert W.parse_caption("a green triangle") == ([("green", "triangle")], None)
    for bad in ("a red", "red circle", "a red circle on grey and a blue square", "a purple circle", ""):
        with pytest.raises(ValueError):
            W.parse_caption(bad)
    for sc in W.scenes(4, 50):
        objects, ground = W.parse_caption(sc.caption)
        assert objects == [(o.colour, o.shape) for o in sc.objects]
        assert ground == (sc.ground if sc.mention_ground else None)
        assert set(sc.words()) <= set(W.VOCAB)


def test_grid_fractions():
    s = W.make_scene(W.scene_seed(0, 5))
    masks = s.masks()
    f = W.grid_fractions(masks, 8)
    assert f.shape == (len(s.objects) + 1, 8, 8)
    assert torch.allclose(f.sum(0), torch.ones(8, 8))
    manual = masks.float().reshape(-1, 8, 4, 8, 4).mean(dim=(2, 4))
    assert torch.equal(f, manual)
    assert torch.allclose(W.grid_fractions(masks, 4).sum(0), torch.ones(4, 4))
    assert W.grid_fractions(masks, (5, 7)).shape == (len(s.objects) + 1, 5, 7)  # not a divisor: adaptive
    owner = W.grid_owner(masks, 8)
    assert owner.shape == (8, 8) and set(owner.unique().tolist()) <= set(range(len(s.objects) + 1))
    square = torch.zeros(32, 32, dtype=torch.bool)
    square[4:12, 0:2] = True  # half of cells (1, 0) and (2, 0)
    g = W.grid_fractions(square, 8)
    assert g[1, 0] == 0.5 and g[2, 0] == 0.5 and g.sum() == 1.0


# ------------------------------------------------------------------------------------------------------
# checker


def test_checker_on_clean_scenes():
    scenes = list(W.scenes(11, 500))
    results = [W.check(s.render(), s, s.ground) for s in scenes]
    assert np.mean([r.ok for r in results]) >= 0.99
    assert all(W.check(s.render(), s.caption).ok for s in scenes[:50])  # captions name the ground or not
    # the checker is not trivially true: each scene against the next scene's objects
    assert np.mean([W.check(a.render(), b, b.ground).ok for a, b in itertools.pairwise(scenes)]) < 0.05


def test_checker_with_mild_noise():
    g = torch.Generator().manual_seed(0)
    scenes = list(W.scenes(12, 100))
    ok = [W.check((s.render() + 0.05 * torch.randn(3, 32, 32, generator=g)).clamp(0, 1), s, s.ground).ok
          for s in scenes]
    assert np.mean(ok) >= 0.97


def test_checker_rejects_wrong_images():
    s = W.Scene((W.Obj("red", "circle", 2, 2, 14), W.Obj("blue", "triangle", 17, 16, 13)), "grey", True)
    img = s.render()
    assert W.check(img, s.caption)
    assert W.check(img, [("blue", "triangle"), ("red", "circle")])  # order does not matter
    assert not W.check(img, [("red", "square"), ("blue", "triangle")])  # wrong shape
    assert not W.check(img, [("green", "circle"), ("blue", "triangle")])  # wrong colour
    assert not W.check(img, [("red", "circle")])  # an unprompted blue triangle
    assert not W.check(img, [("red", "circle"), ("blue", "triangle"), ("yellow", "square")])  # missing one
    assert not W.check(img, s, ground="white")
    r = W.check(img, [("red", "circle")])
    assert any("unprompted blue triangle" in x for x in r.reasons)
    blank = W.Scene((W.Obj("red", "circle", 2, 2, 14),), "grey").render()
    blank[:] = 0.5
    assert not W.check(blank, [("red", "circle")])
    patch = W.Scene((W.Obj("red", "circle", 2, 2, 14),), "grey").render()
    patch[:, 20:28, 20:28] = 1.0  # a white square on grey: a second ground colour
    assert not W.check(patch, [("red", "circle")])
    speck = W.Scene((W.Obj("red", "circle", 2, 2, 14),), "grey").render()
    speck[:, 25:27, 25:27] = torch.tensor([0.16, 0.31, 0.86])[:, None, None]  # 4 px: below MIN_AREA, ignored
    assert W.check(speck, [("red", "circle")])
    # numpy HWC 0..255 input is accepted too
    assert W.check((img.permute(1, 2, 0).numpy() * 255).round(), s.caption)


def test_shape_classifier_on_each_shape():
    for shape, size in itertools.product(W.SHAPES, range(8, 21)):
        s = W.Scene((W.Obj("green", shape, 5, 5, size),), "white")
        (blob,), ground, _ = W.find_blobs(s.render())
        assert blob.shape == shape, (shape, size, blob)
        assert ground == "white"


# ------------------------------------------------------------------------------------------------------
# tokenizer, text encoder, latent map, weights file


def test_tokenizer_layout():
    tok = MM.Tokenizer()
    ids = tok.ids("a red circle and a blue square on grey")
    assert len(ids) == MM.CONTEXT == 77
    assert ids[0] == tok.sot and ids[10] == tok.eot and all(i == tok.eot for i in ids[10:])
    assert [tok.vocab[i] for i in ids[1:10]] == CAPTION_WORDS
    empty = tok.ids("")
    assert empty == [tok.sot] + [tok.eot] * 76
    assert tok.encode(["a red circle", ""]).shape == (2, 77)
    strings = tok.tokens("A Red circle")
    assert strings[:5] == ["<|startoftext|>", "a</w>", "red</w>", "circle</w>", "<|endoftext|>"]
    with pytest.raises(ValueError, match="vocabulary"):
        tok.ids("a purple circle")
    with pytest.raises(ValueError, match="fit"):
        tok.ids(" ".join(["a"] * 76))


def test_tokens_work_with_word_weights():
    tok = MM.Tokenizer()
    strings = tok.tokens("a red circle and a blue square on grey")
    assert [w.text for w in context_words(strings)] == CAPTION_WORDS
    w, missing = token_weights(parse_weights("red circle: 2, grey: 0.5, purple: 3"), strings)
    assert w[2] == 2 and w[3] == 2 and w[9] == 0.5 and w[1] == 1 and w[10:].eq(1).all()
    assert missing == ["purple"]


def test_text_encoder_is_causal():
    torch.manual_seed(0)
    tok = MM.Tokenizer()
    enc = MM.TextEncoder(len(tok)).eval()
    with torch.no_grad():
        out = enc(tok.encode(["a red circle", "a blue square and a green triangle on white", ""]))
    assert out.shape == (3, 77, 64)
    assert torch.allclose(out[0, 0], out[1, 0]) and torch.allclose(out[0, 0], out[2, 0])  # SOT state shared
    assert torch.allclose(out[0, 1], out[1, 1])  # "a" at position 1 in both: causal
    assert not torch.allclose(out[0, 2], out[1, 2])


def test_chroma_style_text_is_trimmed_and_padded_as_forge_stacks_it():
    """The MMDiT miniature's text as Chroma's reaches Forge Neo's model: T5 unpadded (the words, ``</s>``), a
    batch's shorter rows padded with copies of their last vector (``prompt_parser.stack_conds``)."""
    torch.manual_seed(0)
    tok = MM.tokenizer_for(MM.MMDIT_CONFIG)
    enc = MM.TextEncoder(len(tok), layers=1, copy_padding=True).eval()
    prompts = ["a red circle on grey", "a blue square", ""]
    ids = tok.encode(prompts)
    assert ids.shape == (3, 6) and ids[0, -1] == tok.eot and tok.encode("").tolist() == [[tok.eot]]
    with torch.no_grad():
        batch = enc(ids)
        for row, prompt in zip(batch, prompts, strict=True):
            alone = enc(tok.encode(prompt))[0]
            stacked = torch.cat([alone, alone[-1:].repeat(len(row) - len(alone), 1)])
            assert torch.allclose(row, stacked, atol=1e-6)


def test_latent_map_round_trip():
    images, _, _ = W.batch(5, 0, 8)
    lat = MM.to_latent(images)
    assert lat.shape == (8, 4, 32, 32) and (lat[:, 3] == 0).all() and lat.abs().max() <= 1
    assert torch.allclose(MM.to_rgb(lat), images, atol=1e-7)
    assert torch.equal(MM.to_uint8(MM.to_rgb(lat)), MM.to_uint8(images))
    x = torch.rand(2, 3, 5, 5)
    assert (MM.to_rgb(MM.to_latent(x)) - x).abs().max() < 1e-6
    assert MM.to_rgb(torch.full((1, 4, 2, 2), 3.0)).max() == 1  # clamped


def test_weights_file_round_trip(tmp_path):
    config = dict(MM.DEFAULT_CONFIG, text={"dim": 64, "layers": 1, "heads": 4})
    text, net = MM.build(config, seed=0)
    path = tmp_path / "m.safetensors"
    sha = MM.save(path, text, net, config, {"steps": 1})
    assert sha == MM.sha256_of(path)
    text2, net2, meta = MM.load(path, sha256=sha)
    assert meta.config == config and meta.training == {"steps": 1} and meta.sha256 == sha
    assert not any(p.requires_grad for p in net2.parameters()) and not net2.training
    assert all(p.dtype == torch.float32 for p in net2.parameters())
    p1 = dict(net.named_parameters())
    for k, v in net2.named_parameters():
        assert torch.equal(v, p1[k].detach().half().float())
    with pytest.raises(RuntimeError, match="sha256"):
        MM.load(path, sha256="0" * 64)
    with pytest.raises(ValueError, match="architecture"):
        MM.build(dict(config, arch="nope"))
