"""Text-to-image, captioning and interleaved generation on one shipped checkpoint (Orthus / MMAR
on the shared backbone; the training recipe is apps/t2i/recipe.py).

Every call is a schedule run by the one generation loop (backbone/generate.py): an image in the
checkpoint's order (``RasterSchedule``, mar.py ``MaskedSchedule``, blocks.py ``NextScaleSchedule``
/ ``NextCellSchedule``), captions (``CaptionSchedule``), or text and images handing over to each
other (``InterleavedSchedule``).

    omniar t2i "a red circle to the left of a blue square" -o out.png
    omniar caption image.png
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError
from torch import Tensor

from apps.t2i.blocks import NextCellSchedule, NextScaleSchedule
from apps.t2i.data import BOI, BOS, EOI, EOS, MAX_PROMPTS, PAD, WordVocab, encode_prompts, image_slots, make_tokenizer
from apps.t2i.layout import LayoutSchedule
from apps.t2i.mar import MaskedSchedule
from apps.t2i.schedules import CaptionSchedule, ImageSchedule, InterleavedSchedule, RasterSchedule
from backbone.container import OmniModel
from backbone.generate import run_to_end
from backbone.sampling import SamplingParams
from backbone.sequence import Segment, pack
from heads.diffusion import cfg_schedule as cfg_at
from modalities.image import PatchTokenizer
from modalities.shape_layout import NONE, describe


MAX_RERANK = 16             # candidates per prompt for text_to_image(rerank=K)
RERANK_SEED_STRIDE = 1009   # candidate k's seed: seed + 1009 k (prime: away from the per-batch seed + i of callers)


class ImageModel:
    """The shipped checkpoint: ``text_to_image``, ``caption`` and ``generate`` on the same weights."""
    MAX_PROMPTS = MAX_PROMPTS

    def __init__(self, model: OmniModel, vocab: WordVocab, folder=None):
        self.model, self.vocab = model.eval(), vocab
        self.device = next(model.parameters()).device
        self.tok = make_tokenizer(model.config["meta"]["image"], folder, self.device)
        self.order = model.config["meta"].get("order", "raster")
        self.order_kw = model.config["meta"].get("order_kw", {})       # next_scale / next_cell options
        self.plan = 1 + vocab.layout_len if vocab.layout else 0         # <layout> + its words (apps/t2i/layout.py)

    @classmethod
    def from_pretrained(cls, folder, device=None) -> "ImageModel":
        return cls(OmniModel.from_pretrained(folder, device=device), WordVocab.load(folder), folder)

    def check_prompt(self, prompt: str) -> list[int]:
        """A prompt -> its word ids, or ValueError (unknown words; more words than the context
        leaves room for beside the image) before any generation starts."""
        ids = self.vocab.encode(prompt)
        room = self.model.args.block_size - self.model.adapters["image"].n_patches - 2 - self.plan  # <bos>, <boi>
        if len(ids) > room:
            raise ValueError(f"the prompt has {len(ids)} words; this model takes at most {room}")
        return ids

    def image_schedule(self, B: int, head_kw: dict, generator: torch.Generator, guidance=None, prompt=None,
                       commit: bool = False, passes: int = 16) -> ImageSchedule:
        """The schedule of one image in this checkpoint's order (see ``ImageSchedule``)."""
        args = (self.model, B, head_kw, generator, guidance, prompt, commit)
        if self.order == "mar":
            return MaskedSchedule(*args, passes=passes)
        if self.order == "next_scale":
            return NextScaleSchedule(*args, patch=self.tok.patch, up=self.order_kw["up"])
        if self.order == "next_cell":
            return NextCellSchedule(*args, cell=self.order_kw["cell"])
        return RasterSchedule(*args)

    def text_to_image_schedule(self, prompts: list[str], steps: int = 25, cfg: float = 3.0,
                               temperature: float = 1.0, seed: int = 0, cfg_schedule: str = "constant",
                               passes: int = 16, layout_temperature: float = 1.0) -> ImageSchedule:
        """The schedule of ``text_to_image`` (its arguments); run it with backbone.generate's
        ``run_to_end`` or step it as a ``Generation`` -> tokens (B, N, d). A layout checkpoint
        writes each prompt's plan first (``write_layouts``, here, before the schedule is returned);
        the schedule's ``layouts`` holds them (B lists of words; [] without a plan)."""
        caps = encode_prompts(self.vocab, prompts, steps, cfg, temperature)
        for p in ([prompts] if isinstance(prompts, str) else prompts):
            self.check_prompt(p)
        cfg_at(cfg_schedule, cfg, 0.0)                                  # an unknown schedule fails here
        gen = torch.Generator(device=self.device).manual_seed(seed)
        plans = self.write_layouts(caps, layout_temperature, gen) if self.plan else [[] for _ in caps]
        guided = cfg != 1.0
        rows = ([[Segment([BOS, *c, *([self.vocab.mark] + p if p else []), BOI])] for c, p in zip(caps, plans)]
                + ([[Segment([BOS, BOI])]] * len(caps) if guided else []))   # null rows: no caption, no plan
        seq = pack(rows, PAD, side="left")
        prompt = seq.prompt(self.model, seq.ids.shape[1] + self.model.adapters["image"].n_patches)
        guidance = (lambda p: cfg_at(cfg_schedule, cfg, p)) if guided else None
        schedule = self.image_schedule(len(caps), {"steps": steps, "temperature": temperature}, gen, guidance, prompt,
                                       passes=passes)
        schedule.layouts = [[self.vocab.itos[i] for i in p] for p in plans]
        return schedule

    @torch.no_grad()
    def write_layouts(self, caps: list[list[int]], temperature: float = 1.0,
                      generator: torch.Generator | None = None) -> list[list[int]]:
        """Caption word ids (B lists) -> each caption's layout, B lists of ``LAYOUT_LEN`` word ids,
        sampled by the LM head under the layout grammar (apps/t2i/layout.py)."""
        if not 0 <= temperature <= 10:
            raise ValueError(f"layout_temperature must be in [0, 10], got {temperature}")
        params = SamplingParams(temperature=temperature)
        return run_to_end(self.model, LayoutSchedule(self.model, self.vocab, caps, params, generator))

    @torch.no_grad()
    def text_to_image(self, prompts: list[str], steps: int = 25, cfg: float = 3.0, temperature: float = 1.0,
                      seed: int = 0, cfg_schedule: str = "constant", passes: int = 16, rerank: int = 1,
                      layout_temperature: float = 1.0, return_layouts: bool = False):
        """Generate one image per prompt -> (B, 3, H, W) in [0, 1] (and, with ``return_layouts``,
        each image's plan as a list of words: [] for a checkpoint without a layout).

        ``rerank`` K > 1: draw K candidates per prompt (seeds ``seed``, ``seed + 1009``, ...; the
        first is the image ``rerank=1`` draws) and keep the one the same checkpoint's captioning
        finds likeliest to be described by the prompt (``caption_logprob``; a layout checkpoint
        scores the candidate's own plan and the prompt). In the spirit of DALL-E's CLIP reranking
        (Ramesh et al. 2021), with the model's own captioner as the judge instead of a separate
        contrastive model; it costs K generations and K scoring passes.

        ``steps``: denoising steps of the head per patch. ``passes``: backbone passes of a masked
        (MAR) order, 1 to N (apps/t2i/mar.py); the raster order makes one per patch.
        With guidance (cfg != 1) the cond rows (caption) and null rows (no caption) decode
        together; each sample comes from the guided head output and is fed back to both.
        ``cfg_schedule`` "linear" ramps the scale from 1 to ``cfg`` over the image (MAR); for the
        raster model a constant scale scored better on training prompts (GenEval-lite 0.40 vs
        0.25 at cfg 3): the first rows decide whether an object starts at all.
        ``layout_temperature``: of the LM head while it writes a layout checkpoint's plan."""
        if not isinstance(rerank, int) or not 1 <= rerank <= MAX_RERANK:
            raise ValueError(f"rerank must be a whole number from 1 to {MAX_RERANK}, got {rerank!r}")
        prompts = [prompts] if isinstance(prompts, str) else list(prompts)
        cands, plans = [], []
        for k in range(rerank):
            schedule = self.text_to_image_schedule(prompts, steps, cfg, temperature, seed + RERANK_SEED_STRIDE * k,
                                                   cfg_schedule, passes, layout_temperature)
            cands.append(self.tok.decode(run_to_end(self.model, schedule)))           # (B, 3, H, W)
            plans.append(schedule.layouts)
        best = torch.zeros(len(prompts), dtype=torch.long)
        if rerank > 1:
            best = torch.stack([self.caption_logprob(c, prompts, p if self.plan else None)
                                for c, p in zip(cands, plans)]).argmax(0)             # (K, B) -> (B,)
        images = torch.stack([cands[int(k)][b] for b, k in enumerate(best)])
        return (images, [plans[int(k)][b] for b, k in enumerate(best)]) if return_layouts else images

    def _caption_context(self, images: Tensor) -> list[list[Segment]]:
        """images (B, 3, H, W) in [0, 1] -> per image ``<bos> <boi>`` and its patch slots, laid out
        as the captioning rows of training (the caption follows an ``<eoi>``)."""
        patches = self.tok.encode(images.to(self.device))                              # (B, N, d)
        N = patches.shape[1]
        first = self.model.adapters["image"].n_patches - N        # next_scale: the finest scale's slots 21..84
        blocks = None if self.order == "raster" else torch.zeros(N, dtype=torch.long)  # as in training
        return [[Segment([BOS, BOI]), image_slots(x, first + torch.arange(N), blocks=blocks)] for x in patches]

    @torch.no_grad()
    def caption_logprob(self, images: Tensor, prompts: list[str], layouts: list[list[str]] | None = None) -> Tensor:
        """images (B, 3, H, W) in [0, 1], one prompt each -> (B,) log p(prompt words, <eos> | image)
        under this checkpoint's captioning (teacher-forced, one backbone pass; nats). A layout
        checkpoint captions through a plan: given ``layouts`` (B lists of words) it scores
        log p(plan, prompt | image); without, it reads each image's plan greedily first and scores
        the prompt after it."""
        caps = [self.vocab.encode(p) for p in prompts]
        plans = [[]] * len(caps)
        if self.plan:
            plans = ([[self.vocab.stoi[w] for w in L] for L in layouts] if layouts is not None
                     else self.read_layouts(images))
            plans = [[self.vocab.mark] + p for p in plans]
        score_plan = layouts is not None
        rows = [[*ctx, Segment([EOI, *p, *c, EOS], head="lm",
                               scored=torch.tensor([False] + [score_plan] * len(p) + [True] * (len(c) + 1)))]
                for ctx, p, c in zip(self._caption_context(images), plans, caps)]
        batch = pack(rows, PAD).batch()
        target = batch.pop("targets")["lm"].to(self.device)                          # (B, T), -100: unscored
        batch = {k: v for k, v in batch.items() if k != "loss_weights"}
        logp = self.model.heads["lm"](self.model(**batch)).float().log_softmax(-1)   # (B, T, V)
        picked = logp.gather(-1, target.clamp(min=0)[..., None])[..., 0]
        return (picked * (target != -100)).sum(1)

    @torch.no_grad()
    def read_layouts(self, images: Tensor) -> list[list[int]]:
        """images (B, 3, H, W) in [0, 1] -> each image's plan as the captioner writes it (greedy,
        unconstrained): B lists of ``layout_len`` word ids."""
        rows = [[*ctx, Segment([EOI])] for ctx in self._caption_context(images)]
        words = run_to_end(self.model, CaptionSchedule(self.model, pack(rows, PAD, side="left"), self.plan))
        pad, n = [self.vocab.stoi[NONE]] * self.vocab.layout_len, self.vocab.layout_len
        return [(self.vocab.split_layout(w)[0] + pad)[:n] for w in words]

    @torch.no_grad()
    def generate(self, prompt: str = "", max_words: int = 24, steps: int = 25, temperature: float = 1.0,
                 seed: int = 0) -> list:
        """Interleaved generation (Orthus, MMAR): the LM head writes words; when it samples
        ``<boi>`` the image head takes over for the image's slots, then ``<eoi>`` hands back to
        text, until ``<eos>``. Returns segments: str (text) or Tensor (3, H, W) (an image).
        From an empty prompt the model writes a caption and its image, or an image and its caption."""
        ids = [BOS] + (self.vocab.encode(prompt) if prompt.strip() else [])
        gen = torch.Generator(device=self.device).manual_seed(seed)
        head_kw = {"steps": steps, "temperature": temperature}
        slots = self.model.adapters["image"].n_patches                     # N, or 85 for next_scale
        new_image = lambda: self.image_schedule(1, head_kw, gen, commit=True, passes=min(16, slots))  # noqa: E731
        schedule = InterleavedSchedule(self.model, ids, max_words + self.plan, SamplingParams(temperature=temperature),
                                       gen, new_image, len(ids) + 2 * (max_words + self.plan) + slots + 4)
        return [self.vocab.decode(s) if isinstance(s, list) else self.tok.decode(s)[0]
                for s in run_to_end(self.model, schedule)]

    @torch.no_grad()
    def caption(self, images: Tensor, max_words: int = 24) -> list[str]:
        """images (B, 3, H, W) in [0, 1] -> greedy captions (a layout checkpoint writes its plan
        first; the plan is not part of the caption)."""
        rows = [[*ctx, Segment([EOI])] for ctx in self._caption_context(images)]
        words = run_to_end(self.model, CaptionSchedule(self.model, pack(rows, PAD, side="left"), max_words + self.plan))
        return [self.vocab.decode(w) for w in words]                  # a layout checkpoint's plan is dropped


# ---- command line --------------------------------------------------------------------------------
MAX_SIDE = 4096  # refuse decompression bombs and absurd uploads before resizing


def read_image(path, tok: PatchTokenizer | None = None, name: str | None = None) -> Tensor:
    """An image file -> (1, C, H, W) in [0, 1] at the tokenizer's size (default 32x32 RGB); clear
    ValueError for non-images and huge sizes. Other sizes are box-resized. ``name``: what messages
    call the file (an upload's own name, not the server's temporary path)."""
    try:
        with Image.open(path) as im:
            if max(im.size) > MAX_SIDE:
                raise ValueError(f"image is {im.size[0]}x{im.size[1]}; the limit is {MAX_SIDE} pixels a side")
            im = im.convert("RGB")
            im.load()
    except (UnidentifiedImageError, OSError) as e:
        raise ValueError(f"{name or path}: not a readable image ({e.__class__.__name__})") from None
    return (tok or PatchTokenizer()).from_pil([im], resize=True)


def save_images(images: Tensor, path, nrow: int | None = None):
    """(B, 3, H, W) in [0, 1] -> one PNG (a grid when B > 1)."""
    from torchvision.utils import make_grid  # heavy: imported only when a grid is written
    grid = make_grid(images, nrow=nrow or int(np.ceil(np.sqrt(len(images)))), padding=2, pad_value=1.0)
    arr = (grid.clamp(0, 1) * 255).round().byte().permute(1, 2, 0).numpy()
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(arr).save(path)


IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".webp")


def check_image_path(path: str) -> Path:
    """An output path PIL can write, checked before any work: ValueError otherwise."""
    p = Path(path)
    if p.suffix.lower() not in IMAGE_SUFFIXES:
        raise ValueError(f"-o must name an image file ({', '.join(IMAGE_SUFFIXES)}), got {path!r}")
    if p.is_dir():
        raise ValueError(f"-o {path} is a folder; give a file name")
    return p


def cli_text_to_image(a):
    if not (1 <= a.n <= ImageModel.MAX_PROMPTS):
        raise ValueError(f"--n must be in [1, {ImageModel.MAX_PROMPTS}]")
    if not 1 <= a.rerank <= MAX_RERANK:
        raise ValueError(f"--rerank must be in [1, {MAX_RERANK}]")
    check_image_path(a.out)
    m = ImageModel.from_pretrained(a.model, device=a.device)
    images, plans = m.text_to_image([a.prompt] * a.n, steps=a.steps, cfg=a.cfg, temperature=a.temperature,
                                    seed=a.seed, rerank=a.rerank, return_layouts=True,
                                    layout_temperature=getattr(a, "layout_temperature", 1.0))
    save_images(images, a.out)
    print(f"wrote {a.out} ({a.n} image{'s' * (a.n > 1)})")
    for i, p in enumerate(plans):                      # a layout checkpoint's plan of each image
        if p:
            print(f"plan {i + 1}: {describe(p)}")


def cli_caption(a):
    m = ImageModel.from_pretrained(a.model, device=a.device)
    print(m.caption(read_image(a.image, m.tok))[0])
