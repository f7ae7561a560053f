"""Text-to-image and captioning in one model (Orthus / MMAR raster order) on the shared backbone.

A sequence interleaves caption words and continuous image patches (never vector-quantised):

    text-to-image:  <bos> a red circle ... <boi> p1 ... p64 <eoi> <eos>
    captioning:     <bos> <boi> p1 ... p64 <eoi> a red circle ... <eos>

The LM head predicts the words and the special tokens; the hidden state before each patch (the
one at ``<boi>`` for p1) conditions the diffusion (or flow) head, which denoises the patch
(MAR, Li et al. 2024). Captioning sequences start their image with no caption, so they also
train the unconditional image model that classifier-free guidance subtracts; text-to-image
sequences drop their caption with probability ``caption_drop`` for the same reason. The
training loss is ``lm_weight * LM + image_weight * diffusion`` (MMAR balances the two).

    omniar train t2i --config configs/t2i_shapes.yaml
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from apps.t2i.data import (BOI, BOS, DATA, EOI, EOS, IMG, MAX_PROMPTS, PAD, SPECIALS,  # noqa: F401
                           ShapesT2ITask, WordVocab, _rows, build_batch, digits_data, encode_prompts,
                           grammar_words, shapes_data)
from backbone.container import OmniModel, part
from backbone.generate import decode_n_tokens, decode_one_embedding, decode_one_token, left_pad, prefill
from backbone.sampling import SamplingParams
from backbone.train import TrainConfig, cli_command, save_trained, train
from backbone.transformer import ModelArgs
from heads.lm import LMHead
from modalities.image import PatchTokenizer
from modalities.image_embed import PatchEmbed


def make_tokenizer(image: dict | None, base=None, device=None):
    """The ``image:`` config -> a PatchTokenizer (pixel patches, the default) or, with ``tokenizer:
    latent`` and ``folder`` (a local diffusers AutoencoderKL folder, relative to ``base``), a
    LatentTokenizer (modalities/image_latent.py: latent patches, for larger images and GPUs)."""
    c = dict(image or {})
    kind = c.pop("tokenizer", "patch")
    if kind == "patch":
        return PatchTokenizer(**c)
    if kind != "latent":
        raise ValueError(f"unknown image tokenizer {kind!r}; choose 'patch' or 'latent'")
    from modalities.image_latent import LatentTokenizer
    folder = c.pop("folder", None)
    if not folder:
        raise ValueError("image.tokenizer 'latent' needs image.folder (a local diffusers AutoencoderKL folder)")
    c.pop("channels", None)
    c.pop("scale", None)                                   # both come from the VAE
    return LatentTokenizer.from_pretrained(Path(base or ".") / folder, device=device, **c)


def tokenizer_config(tok) -> dict:
    if hasattr(tok, "vae"):   # a latent model carries its VAE inside the checkpoint folder (vae/)
        return {"tokenizer": "latent", "folder": "vae", **tok.config()}
    return {"size": tok.size, "patch": tok.patch, "channels": tok.channels, "scale": tok.scale}


ORDERS = ("raster", "mar", "next_scale", "next_cell")


def build_model(cfg: dict, vocab: WordVocab, tok: PatchTokenizer) -> OmniModel:
    m, h, order = cfg["model"], cfg.get("head", {}), cfg.get("order", "raster")
    if order not in ORDERS:
        raise ValueError(f"unknown order {order!r}; choose one of {', '.join(ORDERS)}")
    args = ModelArgs.from_name(m.get("preset", "nano"), vocab_size=vocab.vocab_size, **m.get("args", {}))
    kind = h.get("kind", "diffusion")
    if kind == "diffusion":
        from heads.diffusion import DiffusionHead as Head
    elif kind == "flow":
        from heads.flow import FlowHead as Head
    else:
        raise ValueError(f"unknown head kind {kind!r}; choose 'diffusion' or 'flow'")
    head_kw = {k: v for k, v in h.items() if k != "kind"}
    if order in ("next_scale", "next_cell"):  # apps/t2i/blocks.py: one patch index per slot, a learned start
        from apps.t2i.blocks import adapter_kwargs, order_options
        adapter_kw, order_kw = adapter_kwargs(order, tok.n_side), order_options(order, cfg.get("order_kw"))
    else:
        adapter_kw, order_kw = {"n_patches": tok.n_tokens, **({"mask_token": True} if order == "mar" else {})}, {}
    return OmniModel.build(
        args, heads={"lm": part(LMHead, dim=args.dim, vocab_size=vocab.vocab_size),
                     "image": part(Head, dim=args.dim, token_dim=tok.token_dim, **head_kw)},
        adapters={"image": part(PatchEmbed, token_dim=tok.token_dim, dim=args.dim, **adapter_kw)},
        meta={"task": "t2i", "order": order, "head": kind, "image": tokenizer_config(tok),
              "data": cfg.get("data", {}).get("kind", "shapes"), **({"order_kw": order_kw} if order_kw else {})})


def run(cfg: dict, out: str | None = None, device: str = "cpu", resume: bool = False) -> tuple[OmniModel, dict]:
    tok = make_tokenizer(cfg.get("image"), device=device)
    d = cfg.get("data", {})
    vocab = WordVocab(grammar_words(d.get("kind", "shapes")))
    tcfg = TrainConfig.from_dict(cfg["train"])
    torch.manual_seed(tcfg.seed)
    model = build_model(cfg, vocab, tok)
    if cli_command():
        model.config["meta"]["train_command"] = cli_command()
    task = ShapesT2ITask(vocab, tok, tcfg.batch_size, d.get("caption_frac", 0.3), d.get("caption_drop", 0.1),
                         tcfg.seed, cfg.get("eval", {}).get("batches", 4), cfg.get("loss_weights"),
                         cfg.get("order", "raster"), d.get("kind", "shapes"), model.config["meta"].get("order_kw"))
    metrics = train(model, task, tcfg, device=device, resume=resume, tokenizer=vocab)
    if out:
        save_trained(model, metrics, out, vocab)
        if hasattr(tok, "vae"):
            tok.save_pretrained(Path(out) / "vae")
    return model, metrics


# ---- inference -----------------------------------------------------------------------------------
class ImageModel:
    """The shipped checkpoint: ``text_to_image`` and ``caption`` on the same weights."""
    MAX_PROMPTS = MAX_PROMPTS

    def __init__(self, model: OmniModel, vocab: WordVocab, folder=None):
        self.model, self.vocab = model.eval(), vocab
        self.tok = make_tokenizer(model.config["meta"]["image"], folder, next(model.parameters()).device)
        self.order = model.config["meta"].get("order", "raster")
        self.order_kw = model.config["meta"].get("order_kw", {})       # next_scale / next_cell options

    @classmethod
    def from_pretrained(cls, folder, device=None) -> "ImageModel":
        return cls(OmniModel.from_pretrained(folder, device=device), WordVocab.load(folder), folder)

    def _embed(self, x: Tensor, index: int) -> Tensor:
        """x (B, d) patches at raster index -> (B, D) input embeddings."""
        idx = torch.full((x.shape[0], 1), index, dtype=torch.long, device=x.device)
        return self.model.adapters["image"]((x[:, None], idx))[:, 0]

    @torch.no_grad()
    def text_to_image(self, prompts: list[str], steps: int = 25, cfg: float = 3.0, temperature: float = 1.0,
                      seed: int = 0, cfg_schedule: str = "constant", passes: int = 16) -> Tensor:
        """Generate one image per prompt -> (B, 3, H, W) in [0, 1].

        ``steps``: denoising steps of the head per patch. ``passes``: backbone passes of a masked
        (MAR) order, 1 to N (apps/t2i/mar.py); the raster order makes one per patch.
        Raster order: the cond rows (caption) and null rows (no caption) decode together; each
        patch is sampled from the guided head output and fed back to both. ``cfg_schedule``
        "linear" ramps the scale from 1 to ``cfg`` over the patches (MAR); for this raster model a
        constant scale scored better on training prompts (GenEval-lite 0.40 vs 0.25 at cfg 3):
        the first rows decide whether an object starts at all."""
        from heads.diffusion import cfg_schedule as ramp
        caps = encode_prompts(self.vocab, prompts, steps, cfg, temperature)
        B, N, dev = len(caps), self.tok.n_tokens, next(self.model.parameters()).device
        guided = cfg != 1.0
        rows = [[BOS, *c, BOI] for c in caps] + ([[BOS, BOI]] * B if guided else [])
        ids, am = left_pad(rows, PAD)
        head = self.model.heads["image"]
        gen = torch.Generator(device=dev).manual_seed(seed)
        h, state = prefill(self.model, ids.to(dev), am.to(dev), ids.shape[1] + self.model.adapters["image"].n_patches)
        if self.order in ("next_scale", "next_cell"):  # one committed block per scale / cell (apps/t2i/blocks.py)
            from apps.t2i.blocks import SAMPLERS
            try:
                x = SAMPLERS[self.order](self.model, state, B, {"steps": steps, "temperature": temperature}, gen,
                                         guided, lambda p: ramp(cfg_schedule, cfg, p), patch=self.tok.patch,
                                         **self.order_kw)
            finally:
                pass
            return self.tok.decode(x)
        if self.order == "mar":
            from apps.t2i.mar import sample_block
            try:
                x = sample_block(self.model, state, B, N, passes, {"steps": steps, "temperature": temperature},
                                 gen, guided, lambda p: ramp(cfg_schedule, cfg, p), commit=False)
            finally:
                pass
            return self.tok.decode(x)
        out = []
        try:
            for i in range(N):
                scale = ramp(cfg_schedule, cfg, i / max(1, N - 1))
                x = head.sample(h[:B], steps=steps, cfg=scale, temperature=temperature, generator=gen,
                                z_null=h[B:] if guided else None)                        # (B, d)
                out.append(x)
                if i + 1 < N:
                    h = decode_one_embedding(self.model, self._embed(x.repeat(1 + guided, 1), i), state)
        finally:
            pass
        return self.tok.decode(torch.stack(out, 1))

    @torch.no_grad()
    def generate(self, prompt: str = "", max_words: int = 24, steps: int = 25, temperature: float = 1.0,
                 seed: int = 0) -> list:
        """Interleaved generation (Orthus, MMAR): the LM head writes words; when it samples
        ``<boi>`` the diffusion head takes over for the image's patches, then ``<eoi>`` hands
        back to text, until ``<eos>``. Returns segments: str (text) or Tensor (3, H, W) (an image).
        From an empty prompt the model writes a caption and its image, or an image and its caption."""
        dev = next(self.model.parameters()).device
        ids = [BOS] + (self.vocab.encode(prompt) if prompt.strip() else [])
        N, lm, head = self.tok.n_tokens, self.model.heads["lm"], self.model.heads["image"]
        gen = torch.Generator(device=dev).manual_seed(seed)
        text_params = SamplingParams(temperature=temperature)
        x = torch.tensor([ids], device=dev)
        slots = self.model.adapters["image"].n_patches                     # N, or 85 for next_scale
        h, state = prefill(self.model, x, torch.ones_like(x), len(ids) + 2 * max_words + slots + 4)
        segments, words, n_words, images = [], list(ids[1:]), 0, 0
        try:
            while n_words < max_words:
                t = int(lm.sample(h, text_params, gen)[0])
                if t in (EOS, PAD, IMG, EOI, BOS):  # only <eos> is expected; the rest end the sequence too
                    break
                h = decode_one_token(self.model, torch.tensor([t], device=dev), state)
                if t != BOI:
                    words.append(t)
                    n_words += 1
                    continue
                if words:
                    segments.append(self.vocab.decode(words))
                    words = []
                if images:  # one image per sequence, as in training
                    break
                if self.order == "mar":
                    from apps.t2i.mar import sample_block
                    img = sample_block(self.model, state, 1, N, min(16, N), {"steps": steps, "temperature": temperature},
                                       gen, False, None)                                      # (1, N, d)
                elif self.order in ("next_scale", "next_cell"):
                    from apps.t2i.blocks import SAMPLERS
                    img = SAMPLERS[self.order](self.model, state, 1, {"steps": steps, "temperature": temperature},
                                               gen, False, None, patch=self.tok.patch, **self.order_kw)  # (1, N, d)
                else:
                    patches = []
                    for i in range(N):
                        p = head.sample(h, steps=steps, cfg=1.0, temperature=temperature, generator=gen)  # (1, d)
                        patches.append(p)
                        h = decode_one_embedding(self.model, self._embed(p, i), state)
                    img = torch.stack(patches, 1)
                h = decode_one_token(self.model, torch.tensor([EOI], device=dev), state)
                segments.append(self.tok.decode(img)[0])
                images += 1
        finally:
            pass
        if words:
            segments.append(self.vocab.decode(words))
        return segments

    @torch.no_grad()
    def caption(self, images: Tensor, max_words: int = 24) -> list[str]:
        """images (B, 3, H, W) in [0, 1] -> greedy captions."""
        patches = self.tok.encode(images)                                              # (B, N, d)
        B, N, _ = patches.shape
        dev = next(self.model.parameters()).device
        ids = torch.tensor([[BOS, BOI] + [IMG] * N + [EOI]] * B, device=dev)
        first = self.model.adapters["image"].n_patches - N        # next_scale: the finest scale's slots 21..84
        index = torch.tensor([-1, -1] + list(range(first, first + N)) + [-1], device=dev).expand(B, -1)
        seq = torch.zeros(B, N + 3, patches.shape[-1], device=dev)
        seq[:, 2:2 + N] = patches.to(dev)
        emb = self.model.adapters["image"]((seq, index))
        block = None
        if self.order in ("mar", "next_scale", "next_cell"):  # the image block is bidirectional, as in training
            block = torch.arange(N + 3, device=dev)
            block[2:2 + N] = 2
        h, state = prefill(self.model, ids, torch.ones_like(ids), N + 3 + max_words, embeds=emb,
                           embed_mask=index >= 0, block_ids=block)
        words = [[] for _ in range(B)]
        done = torch.zeros(B, dtype=torch.bool)
        try:
            for tok in decode_n_tokens(self.model, h, state, SamplingParams(temperature=0), max_words):
                for b, t in enumerate(tok.tolist()):
                    if not done[b]:
                        done[b] = t == EOS
                        if not done[b]:
                            words[b].append(t)
                if bool(done.all()):
                    break
        finally:
            pass
        return [self.vocab.decode(w) for w in words]


# ---- command line --------------------------------------------------------------------------------
MAX_SIDE = 4096  # refuse decompression bombs and absurd uploads before resizing


def read_image(path, tok: PatchTokenizer | None = None) -> Tensor:
    """An image file -> (1, C, H, W) in [0, 1] at the tokenizer's size (default 32x32 RGB); clear
    ValueError for non-images and huge sizes. Other sizes are box-resized."""
    from PIL import Image, UnidentifiedImageError
    try:
        with Image.open(path) as im:
            if max(im.size) > MAX_SIDE:
                raise ValueError(f"image is {im.size[0]}x{im.size[1]}; the limit is {MAX_SIDE} pixels a side")
            im = im.convert("RGB")
            im.load()
    except (UnidentifiedImageError, OSError) as e:
        raise ValueError(f"{path}: not a readable image ({e.__class__.__name__})") from None
    return (tok or PatchTokenizer()).from_pil([im], resize=True)


def save_images(images: Tensor, path, nrow: int | None = None):
    """(B, 3, H, W) in [0, 1] -> one PNG (a grid when B > 1)."""
    from torchvision.utils import make_grid
    from PIL import Image
    grid = make_grid(images, nrow=nrow or int(np.ceil(np.sqrt(len(images)))), padding=2, pad_value=1.0)
    arr = (grid.clamp(0, 1) * 255).round().byte().permute(1, 2, 0).numpy()
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(arr).save(path)


def cli_text_to_image(a):
    if not (1 <= a.n <= ImageModel.MAX_PROMPTS):
        raise ValueError(f"--n must be in [1, {ImageModel.MAX_PROMPTS}]")
    m = ImageModel.from_pretrained(a.model, device=a.device)
    images = m.text_to_image([a.prompt] * a.n, steps=a.steps, cfg=a.cfg, temperature=a.temperature, seed=a.seed)
    save_images(images, a.out)
    print(f"wrote {a.out} ({a.n} image{'s' * (a.n > 1)})")


def cli_caption(a):
    m = ImageModel.from_pretrained(a.model, device=a.device)
    print(m.caption(read_image(a.image, m.tok))[0])
