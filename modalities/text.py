"""Text modality: tokenizers (char-level and byte-level BPE) and token-stream batches.

Both tokenizers save to / load from the checkpoint folder beside ``model.safetensors``.
Batches are packed Sequences (backbone/sequence.py); generation lives in apps/text/model.py.
"""
from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import torch
from torch import Tensor

from backbone.masks import MaskSpec
from backbone.sequence import Sequence
from modalities.crystal import CIFTokenizer

TOKENIZER_FILE = "tokenizer.json"


class CharTokenizer:
    """One id per character seen in training (nanoGPT shakespeare_char), plus special tokens."""

    kind = "char"

    def __init__(self, chars: str | list[str], special_tokens: list[str] | None = None):
        self.chars = sorted(set(chars))
        self.special_tokens = list(special_tokens or [])
        self.itos = self.chars + self.special_tokens
        self.stoi = {s: i for i, s in enumerate(self.itos)}

    @classmethod
    def train(cls, text: str, special_tokens: list[str] | None = None) -> "CharTokenizer":
        return cls(text, special_tokens)

    @property
    def vocab_size(self) -> int:
        return len(self.itos)

    def token_id(self, token: str) -> int:
        return self.stoi[token]

    def encode(self, text: str) -> list[int]:
        """str -> ids. Raises ValueError naming every character outside the vocabulary."""
        try:
            return [self.stoi[c] for c in text]
        except KeyError:
            unknown = sorted({c for c in text if c not in self.stoi})
            raise ValueError(f"characters outside this model's vocabulary: {unknown!r} "
                             f"(the model knows {len(self.chars)} characters)") from None

    def decode(self, ids: list[int]) -> str:
        return "".join(self.itos[i] for i in ids)

    def save(self, folder: str | os.PathLike):
        data = {"type": "char", "chars": self.chars, "special_tokens": self.special_tokens}
        (Path(folder) / TOKENIZER_FILE).write_text(json.dumps(data, ensure_ascii=False))


class BPETokenizer:
    """Byte-level BPE from HF ``tokenizers`` (GPT-2 style): every unicode string round-trips."""

    kind = "bpe"

    def __init__(self, tok):
        self.tok = tok

    @classmethod
    def train(cls, texts: list[str], vocab_size: int = 2048, special_tokens: list[str] | None = None) -> "BPETokenizer":
        # HF tokenizers: needed only by BPE models, so imported when one is made
        from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
        tok = Tokenizer(models.BPE())
        tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
        tok.decoder = decoders.ByteLevel()
        trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=list(special_tokens or []),
                                      initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
        tok.train_from_iterator(texts, trainer)
        return cls(tok)

    @property
    def vocab_size(self) -> int:
        return self.tok.get_vocab_size()

    def token_id(self, token: str) -> int:
        i = self.tok.token_to_id(token)
        if i is None:
            raise KeyError(token)
        return i

    def encode(self, text: str) -> list[int]:
        return self.tok.encode(text).ids

    def decode(self, ids: list[int]) -> str:
        return self.tok.decode(ids, skip_special_tokens=False)

    def save(self, folder: str | os.PathLike):
        self.tok.save(str(Path(folder) / TOKENIZER_FILE))


def load_tokenizer(folder: str | os.PathLike) -> CharTokenizer | BPETokenizer:
    """Load whichever tokenizer ``save`` wrote into ``folder``."""
    path = Path(folder) / TOKENIZER_FILE
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found: the checkpoint folder has no tokenizer")
    data = json.loads(path.read_text())
    if data.get("type") == "char":
        return CharTokenizer(data["chars"], data.get("special_tokens"))
    if data.get("type") == "cif":
        return CIFTokenizer(data["tokens"])
    from tokenizers import Tokenizer  # HF tokenizers: needed only by BPE models
    return BPETokenizer(Tokenizer.from_file(str(path)))


def make_tokenizer(kind: str, text: str, vocab_size: int = 2048, special_tokens=None):
    if kind == "char":
        return CharTokenizer.train(text, special_tokens)
    if kind == "bpe":
        # train on lines so the iterator is cheap; byte-level BPE still covers any input
        return BPETokenizer.train(text.splitlines(keepends=True), vocab_size, special_tokens)
    if kind == "cif":  # a fixed vocabulary (modalities/crystal.py)
        return CIFTokenizer()
    raise ValueError(f"unknown tokenizer kind {kind!r}; choose 'char', 'bpe' or 'cif'")


def _batch_seed(seed: int, step: int, micro: int) -> int:
    """Stable 63-bit generator seed for (seed, step, micro).

    Not ``hash()``: CPython has ``hash(-1) == hash(-2)``, so eval batches -1 and -2 (and
    other tuples) collided and produced identical windows.
    """
    digest = hashlib.blake2b(f"{seed},{step},{micro}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") >> 1


def pack_windows(win: Tensor, head: str = "lm") -> Sequence:
    """Equal-length token windows (B, T+1) -> the Sequence that
    ``pack([[Segment(w, head=head)] for w in win], trim_last=True)`` builds (inputs w[:-1], targets
    w[1:], no padding), made in a few tensor ops: pack's per-row loop costs ~50x the window gather
    (11 ms for 64 x 256 tokens), and this runs every training step."""
    x = win[:, :-1]
    B, T = x.shape
    return Sequence(x, torch.ones_like(x), torch.arange(T).expand(B, T), targets={head: win[:, 1:]})


class TokenStream:
    """A long 1-D token tensor cut into random (x, y) windows, deterministically per step.

    Batch ``step`` is a pure function of (seed, step, micro): a resumed run sees exactly the
    data it would have seen, and every DDP rank takes its own rows of the same global batch.
    """

    def __init__(self, ids: Tensor, block_size: int, seed: int = 0, start_token: int | None = None):
        if ids.numel() <= block_size + 1:
            raise ValueError(f"corpus of {ids.numel()} tokens is shorter than block_size+1={block_size + 1}")
        self.ids, self.block_size, self.seed = ids.long(), block_size, seed
        self._offsets = torch.arange(block_size + 1)
        # documents that must be seen from their first token (CIFs start with "data_", as
        # prompts do) draw windows only at those starts; otherwise any offset
        self.starts = None
        if start_token is not None:
            starts = (self.ids[: self.ids.numel() - block_size] == start_token).nonzero().flatten()
            if starts.numel() == 0:
                raise ValueError("no document start fits a full window; the corpus is too short")
            self.starts = starts

    def batch(self, step: int, batch_size: int, micro: int = 0, rows: slice = slice(None)) -> dict:
        """Global batch for this step; returns rows ``rows`` of it: input_ids/targets (b, T)."""
        g = torch.Generator().manual_seed(_batch_seed(self.seed, step, micro))
        if self.starts is not None:
            ix = self.starts[torch.randint(self.starts.numel(), (batch_size,), generator=g)][rows]
        else:
            ix = torch.randint(self.ids.numel() - self.block_size, (batch_size,), generator=g)[rows]
        win = self.ids[ix[:, None] + self._offsets]                     # (b, T+1), one gather
        return pack_windows(win).batch()

    def eval_batches(self, n_batches: int, batch_size: int) -> list[dict]:
        """A fixed set of windows (seeded), the same for every model being compared."""
        return [self.batch(-1 - i, batch_size) for i in range(n_batches)]


class TextLMTask:
    """Next-token prediction on a token stream, in the trainer's task shape.

    ``objective`` switches the training objective (issue 8 ablations; all off by default):
      * ``prefix_lm: true``: a random prefix of each window (1..T-1 tokens) is attended
        bidirectionally and not scored; the rest is next-token prediction (the non-causal
        decoder of Wang et al. 2022). Needs a model built with ``prefix_lm: true``. Eval
        windows use a prefix of half the window.
      * ``meap: r``: replace a fraction r of the input tokens by ``mask_id`` while the targets
        stay the true next tokens (MEAP, Zhuang et al. 2025).
      * ``scheduled_sampling: {max_prob, ramp_steps}``: mix the model's own samples into the
        input with a probability that grows linearly to max_prob over ramp_steps
        (batch-scheduled sampling, Cen et al. 2024; see OmniModel.mix_own_samples).
    """

    OBJECTIVES = ("prefix_lm", "meap", "scheduled_sampling")

    def __init__(self, train_ids: Tensor, val_ids: Tensor, block_size: int, batch_size: int,
                 eval_batches: int = 20, eval_batch_size: int | None = None, seed: int = 0,
                 start_token: int | None = None, objective: dict | None = None, mask_id: int | None = None):
        self.train = TokenStream(train_ids, block_size, seed, start_token)
        self.val = TokenStream(val_ids, block_size, seed + 1, start_token)
        self.batch_size, self.seed = batch_size, seed
        self.objective = dict(objective or {})
        unknown = set(self.objective) - set(self.OBJECTIVES)
        if unknown:
            raise ValueError(f"unknown objective settings {sorted(unknown)}; known: {list(self.OBJECTIVES)}")
        meap = self.objective.get("meap", 0)
        if not (0 <= meap < 1):
            raise ValueError(f"meap is the fraction of input tokens to mask, in [0, 1); got {meap}")
        if meap and mask_id is None:
            raise ValueError("meap needs a mask token id (the recipe adds one to the vocabulary)")
        self.mask_id = mask_id
        self._eval = self.val.eval_batches(eval_batches, eval_batch_size or batch_size)
        if self.objective.get("prefix_lm"):
            self._eval = [self._prefix(b, torch.full((len(b["input_ids"]),), block_size // 2)) for b in self._eval]

    @staticmethod
    def _prefix(batch: dict, P: Tensor) -> dict:
        """Bidirectional prefix of P (b,) tokens per row; targets inside the prefix are not scored
        (position P-1 is: it predicts the first token after the prefix)."""
        y = batch["targets"]["lm"].clone()
        y[torch.arange(y.shape[1])[None, :] < (P - 1)[:, None]] = -100
        return {"input_ids": batch["input_ids"], "targets": {"lm": y}, "mask": MaskSpec(prefix_len=P)}

    def train_batch(self, step: int, micro: int, rows: slice) -> dict:
        batch = self.train.batch(step, self.batch_size, micro, rows)
        obj = self.objective
        if not obj:
            return batch
        b, T = batch["input_ids"].shape
        g = torch.Generator().manual_seed(_batch_seed(self.seed + 7919, step, micro))  # objective noise
        if obj.get("meap"):
            hide = torch.rand(b, T, generator=g) < obj["meap"]
            batch["input_ids"] = batch["input_ids"].masked_fill(hide, self.mask_id)
        if obj.get("prefix_lm"):
            batch = self._prefix(batch, torch.randint(1, T, (b,), generator=g))
        ss = obj.get("scheduled_sampling")
        if ss:
            batch["scheduled_sampling"] = float(ss["max_prob"]) * min(1.0, step / max(1, ss.get("ramp_steps", 1)))
        return batch

    def eval_batches(self) -> list[dict]:
        return self._eval
