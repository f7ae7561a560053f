"""Train the codec language model for TTS (VALL-E, or RALL-E with its three switches) with the one
trainer, on the espeak-ng corpus encoded by the shipped codec.

    omniar train tts --config configs/tts_ralle.yaml     # cot + duration-guided masking + duration stop
    omniar train tts --config configs/tts_valle.yaml     # the plain VALL-E ablation

One OmniModel holds both VALL-E stages on one backbone: every batch has AR rows (codebook 0, and
with ``cot`` the prosody tokens first; LM head) and NAR rows (codebooks 1..n_q-1, bidirectional,
``CodecEmbed`` inputs; CodebookHead). See modalities/speech.py for the row layouts.
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from tqdm.auto import tqdm

from apps.tts.codec_recipe import load_corpus
from backbone.container import OmniModel, part
from backbone.sequence import pack
from backbone.train import TrainConfig, run_recipe
from backbone.transformer import ModelArgs
from heads.codebook import CodebookHead
from heads.lm import LMHead
from modalities.speech import PAD, CodecEmbed, SpeechVocab, ar_mask, ar_row, ar_segments, nar_row, phoneme_prosody
from modalities.speech_codec import Codec


def prepare(corpus, codec: Codec, out: str | Path, progress: bool = True) -> Path:
    """Encode every utterance (all n_q levels) and measure its phoneme prosody.
    Writes out/codes.safetensors {"codes": int16 (n_q, total frames)} and out/meta.jsonl."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    # the inventory is espeak-ng's, read off every split (a symbol list, not data)
    vocab = SpeechVocab(sorted({p for r in corpus.items for p in r["phonemes"]}), bins=codec.bins)
    rows, chunks, offset = [], [], 0
    for r in tqdm(corpus.items, desc="encode", disable=not progress):
        wav = corpus.audio(r)
        codes = codec.encode(wav)[0]                                                  # (n_q, F)
        durs, pitch = phoneme_prosody(wav, r["starts"], vocab, codec.sample_rate, codec.hop)
        rows.append({k: r[k] for k in ("id", "split", "text", "speaker", "phonemes", "starts", "n")}
                    | {"durs": durs, "pitch": pitch, "frame_offset": offset, "F": codes.shape[1]})
        chunks.append(codes.to(torch.int16))
        offset += codes.shape[1]
    save_file({"codes": torch.cat(chunks, 1)}, str(out / "codes.safetensors"))
    (out / "vocab.json").write_text(json.dumps(vocab.to_dict()))
    (out / "meta.jsonl.tmp").write_text("".join(json.dumps(r) + "\n" for r in rows))
    (out / "meta.jsonl.tmp").replace(out / "meta.jsonl")   # written last: its presence means complete
    return out


class SpeechData:
    """A prepared folder: ``rows(split)``, ``codes(row)`` -> (n_q, F) int64, ``vocab``."""

    def __init__(self, folder: str | Path):
        folder = Path(folder)
        self.items = [json.loads(l) for l in (folder / "meta.jsonl").read_text().splitlines()]
        self.all_codes = load_file(str(folder / "codes.safetensors"))["codes"]
        self.vocab = SpeechVocab(**json.loads((folder / "vocab.json").read_text()))

    def rows(self, split: str) -> list[dict]:
        return [r for r in self.items if r["split"] == split]

    def codes(self, r: dict) -> torch.Tensor:
        return self.all_codes[:, r["frame_offset"]:r["frame_offset"] + r["F"]].long()


class TTSTask:
    """Batches for the trainer: half AR rows, half NAR rows, from utterances of similar length
    (a random window of the length-sorted training set, so little is padding). Rows are segments
    (modalities/speech.py ``ar_segments``, ``nar_row``) laid out by ``pack``. The attention mask
    comes beside pack's output, built per row: RALL-E's duration-guided window (``ar_mask``) is not
    expressible as block ids, and a NAR row is one bidirectional block across its token and frame
    segments."""

    def __init__(self, data: SpeechData, batch_size: int, cot: bool, dgm_k: int | None, seed: int = 0,
                 eval_batches: int = 2, window: int = 200):
        self.data, self.vocab, self.bs, self.cot, self.dgm_k, self.seed = data, data.vocab, batch_size, cot, dgm_k, seed
        self.n_q = data.all_codes.shape[0]
        self.train_rows = sorted(data.rows("train"), key=lambda r: r["F"] + len(r["phonemes"]))
        self.val_rows = sorted(data.rows("val"), key=lambda r: r["F"] + len(r["phonemes"]))
        self.window = window
        self._eval = [self.batch(self.val_rows, torch.Generator().manual_seed(7 + i)) for i in range(eval_batches)]

    def batch(self, pool: list[dict], g: torch.Generator) -> dict:
        w = min(self.window, len(pool))
        start = int(torch.randint(len(pool) - w + 1, (1,), generator=g))
        picks = [pool[start + int(i)] for i in torch.randint(w, (self.bs,), generator=g)]
        n_ar = (self.bs + 1) // 2
        v, rows, layouts = self.vocab, [], []
        for k, r in enumerate(picks):
            codes = self.data.codes(r)
            ph = v.phoneme_ids(r["phonemes"])
            if k < n_ar:
                lay = ar_row(v, ph, r["durs"] if self.cot else None, r["pitch"] if self.cot else None,
                             codes[0].tolist())
                rows.append(ar_segments(lay))
                layouts.append((lay, r["durs"]))
            else:
                level = 1 + int(torch.randint(self.n_q - 1, (1,), generator=g))
                n_prompt = int(torch.randint(codes.shape[1] // 2 + 1, (1,), generator=g)) \
                    if float(torch.rand(1, generator=g)) < 0.5 else 0
                rows.append(nar_row(ph, codes, level, n_prompt, bins=v.bins))
                layouts.append(None)
        x = pack(rows, pad_id=PAD)
        T = x.ids.shape[1]
        mask = torch.zeros(len(rows), 1, T, T, dtype=torch.bool)
        for b, lay in enumerate(layouts):
            if lay is not None:
                mask[b, 0] = ar_mask(lay[0], T, lay[1], self.dgm_k if self.cot else None)
            else:                                                     # NAR: fully bidirectional
                L = int(x.attention_mask[b].sum())
                mask[b, 0] = torch.eye(T, dtype=torch.bool)
                mask[b, 0, :L, :L] = True
        return {**x.batch(), "mask": mask}

    def train_batch(self, step: int, micro: int, rows: slice) -> dict:
        g = torch.Generator().manual_seed(self.seed * 1_000_003 + step * 101 + micro)
        return _take_rows(self.batch(self.train_rows, g), rows)

    def eval_batches(self) -> list[dict]:
        return self._eval


def _take_rows(b: dict, rows: slice) -> dict:
    """This rank's rows of a batch. A (select, targets) pair holds the targets of the selected
    positions in row-major order, so the rows' targets are one contiguous run of them."""
    out = {k: b[k][rows] for k in ("input_ids", "mask", "embed_mask") if k in b}
    if "adapter_inputs" in b:
        out["adapter_inputs"] = {n: tuple(t[rows] for t in v) for n, v in b["adapter_inputs"].items()}
    out["targets"] = {}
    for head, t in b["targets"].items():
        if isinstance(t, tuple):
            sel, tgt = t
            t = (sel[rows], tgt[int(sel[:rows.start].sum()):int(sel[:rows.stop].sum())])
        else:
            t = t[rows]
        out["targets"][head] = t
    return out


def build_model(cfg: dict, vocab: SpeechVocab, n_q: int) -> OmniModel:
    m, s = cfg["model"], cfg.get("speech", {})
    args = ModelArgs.from_name(m.get("preset", "nano"), vocab_size=vocab.vocab_size, **m.get("args", {}))
    return OmniModel.build(
        args, heads={"lm": part(LMHead, dim=args.dim, vocab_size=vocab.vocab_size),
                     "nar": part(CodebookHead, dim=args.dim, n_levels=n_q - 1, bins=vocab.bins)},
        adapters={"codes": part(CodecEmbed, n_q=n_q, bins=vocab.bins, dim=args.dim)},
        meta={"task": "tts", "vocab": vocab.to_dict(), "n_q": n_q,
              "cot": bool(s.get("cot", True)), "dgm_k": s.get("dgm_k", 1) if s.get("cot", True) else None,
              "duration_stop": bool(s.get("duration_stop", True)) and bool(s.get("cot", True)),
              "codec": cfg.get("codec", "assets/speech-codec")})


def load_data(cfg: dict) -> SpeechData:
    d = cfg.get("data", {})
    folder = Path(d.get("prepared", "runs/speech/tts_data"))
    if not (folder / "meta.jsonl").is_file():
        prepare(load_corpus(d), Codec.from_pretrained(cfg.get("codec", "assets/speech-codec")), folder)
    return SpeechData(folder)


def build(cfg: dict, tcfg: TrainConfig) -> tuple[OmniModel, TTSTask, None]:
    """The recipe's part for ``run_recipe``: the encoded data, the model and its batches."""
    data = load_data(cfg)
    model = build_model(cfg, data.vocab, data.all_codes.shape[0])
    meta = model.config["meta"]
    return model, TTSTask(data, tcfg.batch_size, meta["cot"], meta["dgm_k"], tcfg.seed), None


def run(cfg: dict, out: str | None = None, device: str = "cpu", resume: bool = False) -> tuple[OmniModel, dict]:
    return run_recipe(cfg, build, out, device, resume,
                      data_keys={"prepared", "folder", "n_train", "n_val", "n_test", "seed", "seconds"})


if __name__ == "__main__":   # prepare the encoded data once: python -m apps.tts.recipe [codec folder]
    prepare(load_corpus({}), Codec.from_pretrained(sys.argv[1] if len(sys.argv) > 1 else "assets/speech-codec"),
            sys.argv[2] if len(sys.argv) > 2 else "runs/speech/tts_data")
