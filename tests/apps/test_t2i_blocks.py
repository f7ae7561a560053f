"""The block-causal orders of apps/t2i/blocks.py (next-scale: FlowAR/VAR; next-cell: xAR): batch
layouts and masks, the cached block-by-block pass agreeing with the training forward, sampling as
schedules over the one loop, the noisy context of xAR, and a short training run."""
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from apps.t2i import model as t2i
from apps.t2i import recipe
from apps.t2i.blocks import (OPTIONS, ROWS, SCHEDULES, adapter_kwargs, cell_order, n_slots, next_cell_rows,
                             next_scale_rows, order_options, pyramid, scale_sides, upsample)
from apps.t2i.data import BOI, BOS, EOI, EOS, IMG, WordVocab, build_batch, grammar_words
from backbone.container import OmniModel, part
from backbone.generate import decode_block, prefill, run_to_end
from backbone.sequence import Segment, pack
from backbone.transformer import ModelArgs
from heads.lm import LMHead
from modalities.image import PatchTokenizer
from modalities.image_embed import PatchEmbed
from modalities.image_shapes import shapes_data
from tests.apps.test_t2i import tiny_cfg

VOCAB = WordVocab(grammar_words())
ORDERS = ("next_scale", "next_cell")


def _model(order: str, kind: str = "diffusion") -> OmniModel:
    """A tiny model as build_model would make it for a block order (n_patches, mask_token per order;
    block_size 128: a next-scale row is up to 1 + 10 words + 1 + 85 + 1 = 98 inputs)."""
    torch.manual_seed(0)
    cfg = tiny_cfg(Path("/nonexistent"))
    args = ModelArgs.from_name(cfg["model"].get("preset", "nano"), vocab_size=VOCAB.vocab_size,
                               **{**cfg["model"]["args"], "block_size": 128})
    if kind == "diffusion":
        from heads.diffusion import DiffusionHead
        head = part(DiffusionHead, dim=args.dim, token_dim=48, **{k: v for k, v in cfg["head"].items() if k != "kind"})
    else:
        from heads.flow import FlowHead
        head = part(FlowHead, dim=args.dim, token_dim=48, width=32, depth=1)
    return OmniModel.build(args, heads={"lm": part(LMHead, dim=args.dim, vocab_size=VOCAB.vocab_size), "image": head},
                           adapters={"image": part(PatchEmbed, token_dim=48, dim=args.dim, **adapter_kwargs(order, 8))},
                           meta={"task": "t2i", "order": order, "order_kw": order_options(order)})


def _patches(n, seed=0):
    torch.manual_seed(seed)
    return torch.randn(n, 64, 48)


def test_scales_cells_and_options():
    assert scale_sides(8) == [1, 2, 4, 8] and n_slots("next_scale", 8) == 85 and n_slots("next_cell", 8) == 64
    assert adapter_kwargs("next_scale", 8) == {"n_patches": 85, "mask_token": True}
    assert cell_order(8)[:8].tolist() == [0, 1, 8, 9, 2, 3, 10, 11]
    assert sorted(cell_order(8).tolist()) == list(range(64))
    with pytest.raises(ValueError, match="power-of-two"):
        scale_sides(6)
    with pytest.raises(ValueError, match="unknown option"):
        order_options("next_scale", {"t_max": 0.5})
    # the token pyramid equals tokenizing the area-downsampled image (tokens are affine in pixels)
    images = torch.rand(2, 3, 32, 32)
    s = pyramid(PatchTokenizer().encode(images), 4)
    assert [x.shape[1] for x in s] == [1, 4, 16, 64]
    for side, x in zip((4, 8, 16), s):
        ref = PatchTokenizer(size=side).encode(F.interpolate(images, size=side, mode="area"))
        torch.testing.assert_close(x, ref, atol=1e-5, rtol=1e-5)
    assert upsample(s[0], 4, "nearest").shape == (2, 4, 48)
    flat = torch.full((1, 4, 48), 0.7)
    for up in ("nearest", "bilinear"):                                            # a flat image stays flat
        torch.testing.assert_close(upsample(flat, 4, up), torch.full((1, 16, 48), 0.7))
    with pytest.raises(ValueError, match="upsampling"):
        upsample(flat, 4, "bicubic")


def test_next_scale_batch_layout():
    patches = _patches(3)
    b = build_batch(next_scale_rows([[10, 11], [12], [13, 14, 15]], patches, ["gen", "cap", "gen"]))
    ids, y, m = b["input_ids"], b["targets"]["lm"], b["mask"][:, 0]
    seq, index, masked = b["adapter_inputs"]["image"]
    sel, tgt = b["targets"]["image"]
    assert ids.shape == (3, 1 + 3 + 1 + 85 + 1) and b["mask"].shape == (3, 1, 91, 91)
    assert ids[0, :4].tolist() == [BOS, 10, 11, BOI] and (ids[0, 4:89] == IMG).all() and ids[0, 89] == EOI
    assert y[0, :3].tolist() == [10, 11, BOI] and (y[0, 3:89] == -100).all() and y[0, 89] == EOS
    assert index[0, 4:89].tolist() == list(range(85)) and (index[0, :4] == -1).all() and index[0, 89] == -1
    assert masked[0].nonzero().flatten().tolist() == [4] and torch.equal(b["embed_mask"], index >= 0)
    scales = pyramid(patches, 4)
    assert sel[0].nonzero().flatten().tolist() == list(range(4, 89))             # every slot predicts its own token
    torch.testing.assert_close(tgt[:85], torch.cat([s[0] for s in scales]))      # 1 + 4 + 16 + 64 targets
    torch.testing.assert_close(tgt[85:], torch.cat([s[2] for s in scales]))
    torch.testing.assert_close(tgt[21:85], patches[0])                           # the finest scale is the image
    torch.testing.assert_close(seq[0, 9:25], upsample(scales[1], 4)[0])          # block 2 reads scale 1, upsampled
    # block-causal: blocks at slots 4 | 5-8 | 9-24 | 25-88, bidirectional inside, causal across
    assert m[0, 5, 8] and m[0, 8, 5] and m[0, 9, 8] and not m[0, 8, 9] and m[0, 88, 4] and not m[0, 24, 25]
    assert m[0, 3, 2] and not m[0, 2, 3] and m[0, 4, 3] and m[0, 89, 88] and not m[0, 88, 89]
    # the captioning row: raster image at the finest scale's indices, one clean block, no image targets
    assert ids[1, :2].tolist() == [BOS, BOI] and ids[1, 66:68].tolist() == [EOI, 12] and y[1, 67] == EOS
    assert index[1, 2:66].tolist() == list(range(21, 85)) and not masked[1].any() and not sel[1].any()
    torch.testing.assert_close(seq[1, 2:66], patches[1])
    assert m[1, 2, 65] and m[1, 66, 2] and not m[1, 65, 66] and y[1, 66] == 12 and (y[1, 1:66] == -100).all()
    part = recipe._rows(b, slice(2, 3))
    assert torch.equal(part["targets"]["image"][1], tgt[85:]) and part["mask"].shape == (1, 1, 91, 91)


def test_next_cell_batch_layout_and_noisy_context():
    patches, perm = _patches(2), cell_order(8)
    clean = build_batch(next_cell_rows([[10, 11], [12]], patches, ["gen", "cap"], torch.Generator().manual_seed(3),
                                       t_max=0.0))
    noisy = build_batch(next_cell_rows([[10, 11], [12]], patches, ["gen", "cap"], torch.Generator().manual_seed(3),
                                       t_max=0.5))
    seq, index, masked = clean["adapter_inputs"]["image"]
    ids, m = clean["input_ids"], clean["mask"][:, 0]
    assert ids.shape == (2, 1 + 2 + 1 + 64 + 1) and (ids[0, 4:68] == IMG).all() and ids[0, 68] == EOI
    assert index[0, 4:68].tolist() == perm.tolist()                      # each slot's index: its target's place
    assert masked[0].nonzero().flatten().tolist() == [4, 5, 6, 7]        # block 0: the learned start
    assert torch.equal(seq[0, 8:68], patches[0, perm[:60]])              # block k holds cell k-1 ...
    sel, tgt = clean["targets"]["image"]
    assert sel[0].nonzero().flatten().tolist() == list(range(4, 68))
    assert torch.equal(tgt, patches[0, perm])                            # ... and predicts cell k
    assert m[0, 8, 11] and m[0, 11, 8] and not m[0, 11, 12] and m[0, 12, 11] and m[0, 67, 4]
    assert index[1, 2:66].tolist() == list(range(64)) and not sel[1].any()   # captioning: raster, clean
    # noisy context: inputs only, one t ~ U(0, t_max) per cell; targets, layout and captioning rows unchanged
    nseq = noisy["adapter_inputs"]["image"][0]
    for k in ("input_ids", "mask", "embed_mask"):
        assert torch.equal(noisy[k], clean[k])
    assert torch.equal(noisy["targets"]["image"][1], tgt)
    assert torch.equal(nseq[1], seq[1]) and torch.equal(nseq[0, :8], seq[0, :8])
    g = torch.Generator().manual_seed(3)
    t = (torch.rand(2, 15, generator=g) * 0.5)[0].repeat_interleave(4)[:, None]
    eps = torch.randn(2, 60, 48, generator=g)[0]
    want = (1 - t) * patches[0, perm[:60]] + t * eps
    torch.testing.assert_close(nseq[0, 8:68], want)
    assert (nseq[0, 8:68] - seq[0, 8:68]).abs().amax() > 0.1


def _slots(order):
    """(start, n) of each block after <boi>."""
    sizes = [s * s for s in scale_sides(8)] if order == "next_scale" else [4] * 16
    starts = torch.tensor([0] + sizes).cumsum(0)[:-1].tolist()
    return list(zip(starts, sizes))


@pytest.mark.parametrize("order", ORDERS)
def test_cached_blocks_match_the_training_forward(order):
    model = _model(order).eval()
    b = build_batch(ROWS[order]([VOCAB.encode("a red circle"), [], VOCAB.encode("two blue squares")], _patches(3),
                                ["gen", "gen", "cap"], torch.Generator().manual_seed(1)))
    with torch.no_grad():
        full = model(input_ids=b["input_ids"], adapter_inputs=b["adapter_inputs"], embed_mask=b["embed_mask"],
                     mask=b["mask"])                                                     # (B, T, D)
    seq, index, masked = b["adapter_inputs"]["image"]
    for r, P in ((0, 5), (1, 2)):  # <bos> caption <boi>, then one committed block at a time
        ids = b["input_ids"][r:r + 1, :P]
        _, state = prefill(model, ids, torch.ones_like(ids), P + n_slots(order, 8))
        for a, n in _slots(order):
            s = slice(P + a, P + a + n)
            emb = model.adapters["image"]((seq[r:r + 1, s], index[r:r + 1, s], masked[r:r + 1, s]))
            hb = decode_block(model, emb, state, commit=True)
            torch.testing.assert_close(hb[0], full[r, s], atol=1e-5, rtol=1e-4)
    # the captioning row as ImageModel.caption feeds it: one bidirectional image block after <bos> <boi>
    ids, block = b["input_ids"][2:3, :67], torch.arange(67)
    block[2:66] = 2
    with torch.no_grad():
        emb = model.adapters["image"]((seq[2:3, :67], index[2:3, :67]))
        h, _ = prefill(model, ids, torch.ones_like(ids), 80, embeds=emb, embed_mask=index[2:3, :67] >= 0,
                       block_ids=block)
    torch.testing.assert_close(h[0], full[2, 66], atol=1e-5, rtol=1e-4)


def _sample(model, order, caps, seed, guided=True):
    """The order's schedule after a left-packed ``<bos> caption <boi>`` (cond rows, then null rows)."""
    seq = pack([[Segment([BOS, *c, BOI])] for c in caps] + ([[Segment([BOS, BOI])]] * len(caps) if guided else []),
               side="left")
    prompt = seq.prompt(model, seq.ids.shape[1] + model.adapters["image"].n_patches)
    kw = {"up": "bilinear"} if order == "next_scale" else {"cell": 2}
    s = SCHEDULES[order](model, len(caps), {"steps": 2, "temperature": 1.0}, torch.Generator().manual_seed(seed),
                         (lambda p: 1 + 2 * p) if guided else None, prompt, **kw)
    return run_to_end(model, s)


@pytest.mark.parametrize("order,kind", [("next_scale", "diffusion"), ("next_cell", "flow")])
def test_sampling_is_the_cached_training_forward(order, kind):
    model = _model(order, kind).eval()
    head = model.heads["image"]
    caps = [VOCAB.encode("a red circle"), VOCAB.encode("two blue squares above a green cross")]
    x = _sample(model, order, caps, seed=1)
    assert x.shape == (2, 64, 48) and torch.isfinite(x).all()
    assert torch.equal(x, _sample(model, order, caps, seed=1))
    assert not torch.equal(x, _sample(model, order, caps, seed=2))
    assert _sample(model, order, caps[:1], seed=1, guided=False).shape == (1, 64, 48)
    calls, sample = [], head.sample                         # record what the head is asked, block by block

    def recording(z, **kw):
        out = sample(z, **kw)
        calls.append((z, kw["z_null"], out, kw["cfg"]))
        return out
    head.sample = recording
    y = _sample(model, order, caps, seed=1)
    assert torch.equal(x, y) and len(calls) == len(_slots(order))
    assert [c[3] for c in calls] == pytest.approx([1 + 2 * k / (len(calls) - 1) for k in range(len(calls))])
    # the same sequences in training layout (cond rows, then caption-less null rows), clean context
    b = build_batch(ROWS[order](caps + [[], []], x.repeat(2, 1, 1), ["gen"] * 4, None,
                                **{**model.config["meta"]["order_kw"], **({"t_max": 0.0} if order == "next_cell" else {})}))
    if order == "next_scale":  # inputs come from the sampled scales, not from downsampling the result
        seq = b["adapter_inputs"]["image"][0]
        scales = [c[2].view(2, -1, 48).repeat(2, 1, 1) for c in calls]
        inputs = torch.cat([torch.zeros(4, 1, 48)] + [upsample(s, 4) for s in scales[:-1]], 1)
        for r in range(4):
            a = int(b["embed_mask"][r].nonzero()[0])
            seq[r, a:a + 85] = inputs[r]
    with torch.no_grad():
        full = model(input_ids=b["input_ids"], adapter_inputs=b["adapter_inputs"], embed_mask=b["embed_mask"],
                     mask=b["mask"])
    for (a, n), (z, z_null, _, _) in zip(_slots(order), calls):
        for r in range(4):
            s = int(b["embed_mask"][r].nonzero()[0]) + a
            want = (z if r < 2 else z_null).view(2, n, -1)[r % 2]
            torch.testing.assert_close(full[r, s:s + n], want, atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("order", ORDERS)
def test_two_training_steps(order):
    model = _model(order).train()
    images, prompts, captions = shapes_data(6, "train", 0)
    modes = ["gen", "gen", "cap", "gen", "gen", "cap"]
    caps = [VOCAB.encode(c if m == "cap" else p) for p, c, m in zip(prompts, captions, modes)]
    b = build_batch(ROWS[order](caps, PatchTokenizer().encode(images), modes, torch.Generator().manual_seed(0),
                                **order_options(order)))
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    for _ in range(2):
        loss, parts = model(**b, loss_weights={"lm": 1.0, "image": 10.0})
        assert torch.isfinite(loss) and set(parts) == {"lm", "image"}
        opt.zero_grad()
        loss.backward()
        emb = model.adapters["image"]
        assert emb.mask.grad.abs().sum() > 0 and emb.pos.weight.grad.abs().sum() > 0
        assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in model.backbone.layers[0].attn.parameters())
        opt.step()


def test_other_grids_digits_8x8_with_2px_patches():
    torch.manual_seed(0)
    patches = torch.randn(2, 16, 4)                                    # 8x8 grey, 2x2 patches: a 4x4 grid
    b = build_batch(next_scale_rows([[10], [11]], patches, ["gen", "cap"], patch=2))
    assert n_slots("next_scale", 4) == 21 and b["input_ids"].shape == (2, 1 + 1 + 1 + 21 + 1)
    assert b["adapter_inputs"]["image"][1][1, 2:18].tolist() == list(range(5, 21))   # captioning: finest slots
    c = build_batch(next_cell_rows([[10], [11]], patches, ["gen", "cap"]))
    assert c["targets"]["image"][1].shape == (16, 4) and not c["mask"][0, 0, 7, 11]  # 4 cells of 4


@pytest.mark.parametrize("order, order_kw", [("next_scale", {"up": "nearest"}), ("next_cell", {"t_max": 0.3})])
def test_recipe_trains_generates_and_captions(tmp_path, order, order_kw):
    cfg = tiny_cfg(tmp_path)
    cfg.update(order=order, order_kw=order_kw)
    cfg["model"]["args"]["block_size"] = 128                    # next-scale rows hold 85 image slots
    recipe.run(cfg, out=str(tmp_path / "model"))
    m = t2i.ImageModel.from_pretrained(tmp_path / "model")
    assert m.order == order and m.order_kw == {**OPTIONS[order], **order_kw}
    x = m.text_to_image(["a red circle", "two blue squares"], steps=2, cfg=3.0, seed=1)
    assert x.shape == (2, 3, 32, 32) and torch.equal(x, m.text_to_image(["a red circle", "two blue squares"],
                                                                          steps=2, cfg=3.0, seed=1))
    assert len(m.caption(x)) == 2
    assert all(isinstance(s, (str, torch.Tensor)) for s in m.generate("", max_words=4, steps=2))
    with pytest.raises(ValueError, match="unknown option"):
        recipe.build_model({**cfg, "order_kw": {"speed": 2}}, m.vocab, m.tok)
