"""Text-to-image + captioning (apps/t2i/): sequences (data.py), training (recipe.py), generation through
schedules (model.py) in both directions and interleaved, the CLI."""
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from apps.t2i import model as t2i
from apps.t2i import recipe
from apps.t2i.data import (BOI, BOS, EOI, EOS, IMG, PAD, WordVocab, build_batch, grammar_words, make_tokenizer,
                           raster_rows)
from backbone.generate import Generation
from modalities.image import PatchTokenizer
from modalities.image_latent import small_autoencoder_config, train_autoencoder
from modalities.image_shapes import shapes_data

ROOT = Path(__file__).resolve().parents[2]


def tiny_cfg(tmp_path, steps=2) -> dict:
    cfg = yaml.safe_load((ROOT / "configs" / "t2i_shapes.yaml").read_text())
    cfg["model"]["args"].update(n_layer=2, n_head=2, dim=32)
    cfg["head"].update(width=32, depth=1)
    cfg["train"].update(out_dir=str(tmp_path / "run"), max_steps=steps, batch_size=4, max_time_s=None,
                        eval_every=0, ckpt_every=0, warmup_steps=1, progress=False)
    cfg["eval"] = {"batches": 1}
    return cfg


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory):
    out = tmp_path_factory.mktemp("t2i")
    recipe.run(tiny_cfg(out), out=str(out / "model"))
    return out / "model"


def test_vocab_names_unknown_words_and_refuses_empty():
    v = WordVocab(grammar_words())
    ids = v.encode("A red circle to the left of a blue square.")
    assert v.decode(ids) == "a red circle to the left of a blue square"
    with pytest.raises(ValueError, match="'hexagon'.*knows"):
        v.encode("a red hexagon")
    with pytest.raises(ValueError, match="empty"):
        v.encode("   ")
    with pytest.raises(ValueError, match="<boi>"):
        v.encode("a <boi> circle")


def test_batch_layout_and_targets():
    patches = torch.randn(2, 64, 48)
    b = build_batch(raster_rows([[10, 11], [12, 13, 14]], patches, ["gen", "cap"]))
    ids, y = b["input_ids"], b["targets"]["lm"]
    sel, tgt = b["targets"]["image"]
    # gen: <bos> w w <boi> p1..p64 <eoi> (<eos> is only a target)
    assert ids[0, :4].tolist() == [BOS, 10, 11, BOI] and ids[0, 68].item() == EOI
    assert y[0, :4].tolist() == [10, 11, BOI, -100] and y[0, 67].item() == EOI and y[0, 68].item() == EOS
    # cap: <bos> <boi> p1..p64 <eoi> w w w -> <eos>
    assert ids[1, :2].tolist() == [BOS, BOI] and ids[1, 66:].tolist() == [EOI, 12, 13, 14]
    assert y[1, 0].item() == BOI and y[1, 65:].tolist() == [EOI, 12, 13, 14, EOS]
    assert (ids[0, 69:] == PAD).all() and (y[0, 69:] == -100).all()
    # the position before each patch selects it, in order; those positions carry no LM target
    assert sel.sum() == 128 and torch.equal(tgt, patches.reshape(-1, 48))
    assert sel[0].nonzero().flatten().tolist() == list(range(3, 67)) and (y[sel] == -100).all()
    seq, index = b["adapter_inputs"]["image"]
    assert torch.equal(seq[0, 4:68], patches[0]) and index[0, 4:68].tolist() == list(range(64))
    assert (index[0, :4] == -1).all() and torch.equal(b["embed_mask"], ids == IMG)
    # a rank's rows keep their own flat image targets
    part = recipe._rows(b, slice(1, 2))
    assert torch.equal(part["targets"]["image"][1], patches[1]) and part["input_ids"].shape[0] == 1


def test_task_batches_replay_and_hold_out_nothing_from_the_vocab():
    v, tok = WordVocab(grammar_words()), PatchTokenizer()
    task = recipe.ShapesT2ITask(v, tok, batch_size=8, seed=3)
    a, b = task.train_batch(5, 0, slice(None)), task.train_batch(5, 0, slice(None))
    assert torch.equal(a["input_ids"], b["input_ids"]) and torch.equal(a["targets"]["image"][1], b["targets"]["image"][1])
    assert not torch.equal(a["input_ids"], task.train_batch(6, 0, slice(None))["input_ids"])


def test_train_then_generate_and_caption(tiny_model):
    m = t2i.ImageModel.from_pretrained(tiny_model)
    x = m.text_to_image(["a red circle", "two blue squares above a green cross"], steps=3, cfg=3.0, seed=1)
    assert x.shape == (2, 3, 32, 32) and 0 <= float(x.min()) and float(x.max()) <= 1
    assert torch.equal(x, m.text_to_image(["a red circle", "two blue squares above a green cross"], steps=3,
                                          cfg=3.0, seed=1))
    assert not torch.equal(x, m.text_to_image(["a red circle", "two blue squares above a green cross"], steps=3,
                                              cfg=3.0, seed=2))
    caps = m.caption(x)
    assert len(caps) == 2 and all(isinstance(c, str) for c in caps)
    with pytest.raises(ValueError, match="unknown word"):
        m.text_to_image(["a red dragon"])
    with pytest.raises(ValueError, match="steps"):
        m.text_to_image(["a red circle"], steps=0)


def test_image_generations_are_schedules_that_interleave(tiny_model):
    """text_to_image is a schedule over the one loop: two requests stepped alternately on one model
    (each Generation owns its cache) give what each gives alone."""
    m = t2i.ImageModel.from_pretrained(tiny_model)
    kw = dict(steps=2, cfg=3.0)
    alone = [m.text_to_image(["a red circle"], seed=0, **kw), m.text_to_image(["two blue squares"], seed=1, **kw)]
    gens = [Generation(m.model, m.text_to_image_schedule(["a red circle"], seed=0, **kw)),
            Generation(m.model, m.text_to_image_schedule(["two blue squares"], seed=1, **kw))]
    while not all(g.done for g in gens):
        for g in gens:
            g.step()
    for g, want in zip(gens, alone):
        assert g.schedule.finished and torch.equal(m.tok.decode(g.schedule.result()), want)


def test_interleaved_generation_switches_heads(tiny_model):
    m = t2i.ImageModel.from_pretrained(tiny_model)
    # a trained-from-scratch 2-step model says little; force the switch by making <boi> certain
    lm = m.model.heads["lm"]
    forward = lm.forward
    calls = {"n": 0}

    def scripted(h):
        logits = forward(h)
        calls["n"] += 1
        want = {1: 7, 2: BOI}.get(calls["n"], EOS)   # a word, then an image, then the end
        want = m.vocab.stoi["red"] if want == 7 else want
        return torch.nn.functional.one_hot(torch.full(logits.shape[:-1], want), logits.shape[-1]).float() * 100
    lm.forward = scripted
    segs = m.generate("a", max_words=8, steps=2)
    assert segs[0] == "a red" and isinstance(segs[1], torch.Tensor) and segs[1].shape == (3, 32, 32)
    assert len(segs) == 2


def omniar(*args):
    return subprocess.run([sys.executable, "-m", "apps.cli", *args], cwd=ROOT, capture_output=True, text=True)


def test_cli_t2i_grid_and_caption(tiny_model, tmp_path):
    from PIL import Image
    out = tmp_path / "grid.png"
    r = omniar("t2i", "a red circle to the left of a blue square", "-o", str(out), "--model", str(tiny_model),
               "--seed", "0", "--steps", "2", "--cfg", "3", "--n", "4")
    assert r.returncode == 0, r.stderr
    assert Image.open(out).size == (2 * 32 + 3 * 2, 2 * 32 + 3 * 2)   # a 2x2 grid with 2 px padding
    single = tmp_path / "one.png"
    t2i.save_images(torch.rand(1, 3, 32, 32), single)
    r = omniar("caption", str(single), "--model", str(tiny_model))
    assert r.returncode == 0, r.stderr
    bad = tmp_path / "notes.png"
    bad.write_text("not an image")
    r = omniar("caption", str(bad), "--model", str(tiny_model))
    assert r.returncode == 2 and "not a readable image" in r.stderr
    r = omniar("t2i", "a red hexagon", "-o", str(out), "--model", str(tiny_model))
    assert r.returncode == 2 and "'hexagon'" in r.stderr


def test_read_image_refuses_huge_and_resizes(tmp_path):
    from PIL import Image
    big = tmp_path / "big.png"
    Image.new("RGB", (5000, 10)).save(big)
    with pytest.raises(ValueError, match="limit"):
        t2i.read_image(big)
    ok = tmp_path / "ok.png"
    Image.fromarray(np.full((64, 64, 3), 255, np.uint8)).save(ok)
    assert t2i.read_image(ok).shape == (1, 3, 32, 32)


def test_latent_tokenizer_option_trains_saves_and_generates(tmp_path):
    """image: {tokenizer: latent}: a diffusers AutoencoderKL's latent patches replace pixel patches;
    the checkpoint carries its VAE (vae/) and loads without the training folder."""
    vae = train_autoencoder(lambda n, s: shapes_data(n, "train", s)[0], steps=0, batch_size=4,
                            config=small_autoencoder_config(width=16, attention=False), out=tmp_path / "vae")
    cfg = tiny_cfg(tmp_path)
    cfg["image"] = {"tokenizer": "latent", "folder": str(tmp_path / "vae"), "patch": 2}
    recipe.run(cfg, out=str(tmp_path / "model"))
    (tmp_path / "vae").rename(tmp_path / "moved")                  # the checkpoint must not need it
    m = t2i.ImageModel.from_pretrained(tmp_path / "model")
    assert m.tok.n_tokens == 64 and m.tok.token_dim == 16 == vae.token_dim * 4
    x = m.text_to_image(["a red circle"], steps=2, cfg=1.0)
    assert x.shape == (1, 3, 32, 32) and len(m.caption(x)) == 1
    with pytest.raises(ValueError, match="unknown image tokenizer"):
        make_tokenizer({"tokenizer": "vq"})


def test_init_from_starts_at_the_checkpoint_and_refuses_another_architecture(tiny_model, tmp_path):
    """model.init_from (configs/t2i_shapes_flow_long.yaml): the built model holds the checkpoint's
    weights before any step; a config of another shape is refused by name."""
    from apps.t2i.data import make_tokenizer
    from backbone.container import OmniModel
    cfg = tiny_cfg(tmp_path)
    cfg["model"]["init_from"] = str(tiny_model)
    tok = make_tokenizer(cfg["image"])
    m = recipe.build_model(cfg, WordVocab(grammar_words()), tok)
    src = OmniModel.from_pretrained(tiny_model)
    for (k, a), b in zip(src.state_dict().items(), m.state_dict().values()):
        assert torch.equal(a, b), k
    assert m.config["meta"]["init_from"] == str(tiny_model)
    cfg["model"]["args"]["dim"] = 64
    with pytest.raises(ValueError, match="init_from .*backbone config differs"):
        recipe.build_model(cfg, WordVocab(grammar_words()), tok)


def test_rerank_keeps_the_candidate_its_own_captioning_scores_best(tiny_model):
    """text_to_image(rerank=K): candidate k is the plain image at seed + 1009 k, and the kept one
    is the argmax of caption_logprob; rerank=1 is the plain call; bad K is refused."""
    from apps.t2i.model import RERANK_SEED_STRIDE
    m = t2i.ImageModel.from_pretrained(tiny_model)
    prompts = ["a red circle", "two blue squares"]
    kw = dict(steps=2, cfg=2.0, seed=3)
    plain = m.text_to_image(prompts, **kw)
    assert torch.equal(m.text_to_image(prompts, rerank=1, **kw), plain)
    cands = [m.text_to_image(prompts, **{**kw, "seed": 3 + RERANK_SEED_STRIDE * k}) for k in range(3)]
    scores = torch.stack([m.caption_logprob(c, prompts) for c in cands])          # (K, B)
    assert scores.shape == (3, 2) and torch.isfinite(scores).all() and (scores < 0).all()
    best = m.text_to_image(prompts, rerank=3, **kw)
    for b in range(2):
        assert torch.equal(best[b], cands[int(scores[:, b].argmax())][b])
    for bad in (0, 17, 2.5):
        with pytest.raises(ValueError, match="rerank must be a whole number from 1 to 16"):
            m.text_to_image(prompts, rerank=bad, **kw)
