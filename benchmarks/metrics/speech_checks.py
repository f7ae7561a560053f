"""Evaluation models for generated speech (text-to-speech on the espeak-ng corpus,
modalities/speech_corpus.py), trained here on CPU (wall-clock budgets) and saved as config.json +
model.safetensors; loading reads safetensors only:

* ``train_ctc`` trains the CTC phoneme recogniser (modalities/speech_align.py: the voice prompt's
  forced aligner at run time, and here the phoneme error rate of generated speech, with
  ``phoneme_error_rate`` and ``pocketsphinx_wer`` in benchmarks/metrics/speech_asr.py);
* speaker similarity: ``SpeakerEncoder``, a small classifier of the corpus training speakers whose
  pooled embedding (L2-normalised) is compared by cosine (``speaker_similarity``), the way
  speaker-verification models such as WavLM-TDNN are used in VALL-E's evaluation, but trained
  here; ``calibrate`` reports the same-/different-speaker cosines and the EER on unseen sentences,
  including the held-out voice (HELDOUT_VOICE), to read those numbers against.

    python -m benchmarks.metrics.speech_checks train-ctc --out assets/speech-ctc --seconds 360
    python -m benchmarks.metrics.speech_checks train-speaker --out assets/speech-speaker --seconds 240
    python -m benchmarks.metrics.speech_checks wer --n 10          # PocketSphinx on corpus reference clips
"""
from __future__ import annotations

import argparse
import json
import math
import random
import shlex
import sys
import time

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from benchmarks.metrics.speech_asr import phoneme_error_rate, pocketsphinx_wer
from modalities.speech_align import CTCRecognizer, ConvBlock, LogMel, Pretrained, as_clips, pad_batch
from modalities.speech_corpus import HELDOUT_VOICE, PAUSE, SAMPLE_RATE, Corpus


def cosine_lr(frac: float, peak: float, warmup: float = 0.05) -> float:
    """LR at fraction ``frac`` of a wall-clock budget: linear warmup then cosine decay to 5% of peak."""
    if frac < warmup:
        return peak * max(frac, 1e-3) / warmup
    return peak * (0.05 + 0.95 * 0.5 * (1 + math.cos(math.pi * min(1.0, (frac - warmup) / (1 - warmup)))))


def augment(wav: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """(B, T) -> same: random gain (+-6 dB) and white noise at 25-50 dB SNR, so the models do not
    depend on espeak-ng's exact level and digital silence (generated audio has neither)."""
    b = wav.shape[0]
    gain = 10 ** ((torch.rand(b, 1, generator=gen) * 12 - 6) / 20)
    rms = wav.pow(2).mean(-1, keepdim=True).sqrt().clamp_min(1e-4)
    snr = torch.rand(b, 1, generator=gen) * 25 + 25
    return gain * (wav + rms * 10 ** (-snr / 20) * torch.randn(wav.shape, generator=gen))


def train_ctc(corpus, out_folder, seconds: float = 360.0, seed: int = 0, device: str = "cpu",
              batch_seconds: float = 20.0, lr: float = 3e-3, **arch) -> CTCRecognizer:
    """Train a CTCRecognizer on the reference audio of ``corpus.rows("train")`` for a wall-clock
    budget of ``seconds``, save it to ``out_folder`` with its phoneme error rate on the val split
    in config.json's meta, and return it (eval mode).

    AdamW (weight decay 0.01), LR warmup then cosine decay over the budget, batches of similar
    length holding ~``batch_seconds`` of audio, gain/noise augmentation. The phoneme set is every
    phoneme of the train split. Also reports the PER of the held-out voice ("voice_per"). Seeded, but the number of steps depends on the machine's speed."""
    start = time.perf_counter()
    rows = corpus.rows("train")
    if not rows:
        raise ValueError("the corpus has no train split")
    phonemes = sorted({p for r in rows for p in r["phonemes"]})
    rng, gen = random.Random(seed), torch.Generator().manual_seed(seed)
    with torch.random.fork_rng(devices=[]):     # seeded init and dropout; the caller's RNG untouched
        torch.manual_seed(seed)
        model = CTCRecognizer(phonemes, **arch).to(device)
        model.features.fit([corpus.audio(r) for r in rng.sample(rows, min(200, len(rows)))])
        opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.01)
        rows = sorted(rows, key=lambda r: r["n"])
        batches, cur = [], []
        for r in rows:                          # consecutive rows of similar length, ~batch_seconds each
            cur.append(r)
            if sum(x["n"] for x in cur) >= batch_seconds * SAMPLE_RATE:
                batches.append(cur)
                cur = []
        batches += [cur] if cur else []
        model.train()
        steps, losses = 0, []
        while time.perf_counter() - start < seconds:
            rng.shuffle(batches)
            for b in batches:
                frac = (time.perf_counter() - start) / seconds
                if frac >= 1:
                    break
                for g in opt.param_groups:
                    g["lr"] = cosine_lr(frac, lr)
                wav, lengths = pad_batch([corpus.audio(r) for r in b])
                wav = augment(wav, gen) * (torch.arange(wav.shape[1]) < lengths[:, None])
                lp, n = model(wav.to(device), lengths.to(device))
                targets = [torch.tensor([model.index[p] for p in _merge_pauses(r["phonemes"])]) for r in b]
                loss = F.ctc_loss(lp.transpose(0, 1), torch.cat(targets).to(device), n,
                                  torch.tensor([len(t) for t in targets]), zero_infinity=True)
                opt.zero_grad()
                loss.backward()
                nn.utils.clip_grad_norm_(model.parameters(), 1.0)
                opt.step()
                steps += 1
                losses.append(loss.item())
    model.eval()
    meta = {"steps": steps, "train_seconds": round(time.perf_counter() - start, 1),
            "final_loss": round(float(np.mean(losses[-20:])), 4) if losses else None}
    for split in ("val", "voice"):              # voice: the held-out speaker, unseen sentences
        if rows := corpus.rows(split):
            meta[f"{split}_per"] = round(phoneme_error_rate([r["phonemes"] for r in rows],
                                                            model.transcribe([corpus.audio(r) for r in rows])), 4)
    model.meta = meta
    model.save_pretrained(out_folder, **meta)
    return model


def _merge_pauses(phonemes: list[str]) -> list[str]:
    """Consecutive pauses as one (espeak-ng often emits two; CTC would need a blank between)."""
    return [p for k, p in enumerate(phonemes) if not (p == PAUSE and k and phonemes[k - 1] == PAUSE)]


class SpeakerEncoder(Pretrained):
    """wav -> log-mel (80, 10 ms hop) -> conv (stride 2) -> residual dilated convs -> mean over
    frames -> linear -> embedding (E); trained as a cosine classifier over ``speakers`` with an
    additive margin (AM-softmax, Wang et al. 2018), which makes cosine the natural score."""
    KIND = "speech-speaker"

    def __init__(self, speakers: list[str], channels: int = 128, blocks: int = 4, dim: int = 64,
                 n_mels: int = 80, hop: int = 160, scale: float = 16.0, margin: float = 0.2, dropout: float = 0.1):
        super().__init__()
        self.config = dict(speakers=list(speakers), channels=channels, blocks=blocks, dim=dim, n_mels=n_mels,
                           hop=hop, scale=scale, margin=margin, dropout=dropout)
        self.speakers = list(speakers)
        self.features = LogMel(n_mels, hop)
        self.stem = nn.Conv1d(n_mels, channels, 5, stride=2, padding=2)
        self.blocks = nn.Sequential(*[ConvBlock(channels, 3, 2 ** i, dropout) for i in range(blocks)])
        self.proj = nn.Linear(channels, dim)
        self.classes = nn.Parameter(torch.randn(len(self.speakers), dim) / dim ** 0.5)

    def forward(self, wav: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        """wav (B, T), lengths (B,) -> embeddings (B, E), not normalised."""
        x, n = self.features(wav, lengths)
        x = F.gelu(self.blocks(F.gelu(self.stem(x))))                    # (B, C, F)
        n = ((n - 1) // 2 + 1).clamp(max=x.shape[-1])
        mask = (torch.arange(x.shape[-1], device=x.device) < n[:, None].to(x.device)).float()
        return self.proj((x * mask[:, None]).sum(-1) / mask.sum(-1, keepdim=True))   # mean of real frames

    def logits(self, emb: torch.Tensor, labels: torch.Tensor | None = None) -> torch.Tensor:
        """embeddings (B, E) -> scaled cosines to each speaker (B, S); with labels (B,), the margin is
        subtracted from the true class (training)."""
        cos = F.normalize(emb, dim=-1) @ F.normalize(self.classes, dim=-1).T
        if labels is not None:
            cos = cos - self.config["margin"] * F.one_hot(labels, len(self.speakers))
        return self.config["scale"] * cos

    @torch.no_grad()
    def embed(self, wavs, batch: int = 32) -> torch.Tensor:
        """Clips (list of (T,) at 16 kHz) -> L2-normalised embeddings (N, E) on CPU."""
        clips = as_clips(wavs)
        self.eval()
        out = torch.zeros(len(clips), self.config["dim"])
        order = sorted(range(len(clips)), key=lambda i: len(clips[i]))
        for s in range(0, len(order), batch):
            idx = order[s:s + batch]
            wav, lengths = pad_batch([clips[i] for i in idx])
            out[idx] = F.normalize(self(wav.to(self.device), lengths.to(self.device)), dim=-1).cpu()
        return out


def speaker_similarity(encoder: SpeakerEncoder, wavs, references) -> torch.Tensor:
    """Cosine of the embeddings of clip i and reference i -> (N,) in [-1, 1]; a single reference
    is compared with every clip (e.g. generations against their voice prompt)."""
    a, b = encoder.embed(wavs), encoder.embed(references)
    if len(b) not in (1, len(a)):
        raise ValueError(f"{len(a)} clips but {len(b)} references (give one, or one per clip)")
    return (a * b).sum(-1)


def eer(same: torch.Tensor, diff: torch.Tensor) -> float:
    """Equal error rate of scores of same-speaker pairs (N,) and different-speaker pairs (M,):
    the rate where accepting scores >= t wrongly rejects as many same pairs as it wrongly accepts
    different pairs (the mean of the two at the closest threshold)."""
    same, diff = torch.as_tensor(same).double(), torch.as_tensor(diff).double()
    if len(same) == 0 or len(diff) == 0:
        raise ValueError(f"need both kinds of pairs, got {len(same)} same and {len(diff)} different")
    t = torch.cat([same, diff]).sort().values
    frr = torch.searchsorted(same.sort().values, t, right=False).double() / len(same)      # same < t
    far = 1 - torch.searchsorted(diff.sort().values, t, right=False).double() / len(diff)  # diff >= t
    k = int((frr - far).abs().argmin())
    return float((frr[k] + far[k]) / 2)


@torch.no_grad()
def calibrate(encoder: SpeakerEncoder, corpus, splits: tuple[str, str] = ("test", "voice")) -> dict:
    """Cosine statistics on unseen sentences: among the ``test`` split clips (training speakers),
    "same_mean", "diff_mean", "eer" over all pairs; "voice_same_mean" (pairs of held-out voice
    clips from ``voice``), "voice_diff_mean" (held-out voice vs test clips) and "voice_eer" (those
    two sets of pairs); "all_eer" over every pair of both splits; "accuracy" of the speaker
    classifier on the test split."""
    test, voice = corpus.rows(splits[0]), corpus.rows(splits[1])
    rows = test + voice
    emb = encoder.embed([corpus.audio(r) for r in rows])
    spk = [r["speaker"] for r in rows]
    sim = emb @ emb.T
    i, j = torch.triu_indices(len(rows), len(rows), 1)
    same = torch.tensor([spk[a] == spk[b] for a, b in zip(i.tolist(), j.tolist())])
    in_test = (i < len(test)) & (j < len(test))
    in_voice = (i >= len(test)) & (j >= len(test))
    cross = (i < len(test)) & (j >= len(test))
    s = sim[i, j]
    out = {"same_mean": float(s[in_test & same].mean()), "diff_mean": float(s[in_test & ~same].mean()),
           "eer": eer(s[in_test & same], s[in_test & ~same]), "n_test": len(test), "n_voice": len(voice)}
    if voice:
        out.update(voice_same_mean=float(s[in_voice & same].mean()), voice_diff_mean=float(s[cross].mean()),
                   voice_eer=eer(s[in_voice & same], s[cross]), all_eer=eer(s[same], s[~same]))
    known = [k for k, r in enumerate(test) if r["speaker"] in encoder.speakers]
    if known:
        pred = encoder.logits(emb[known]).argmax(-1).tolist()
        out["accuracy"] = float(np.mean([encoder.speakers[p] == test[k]["speaker"] for p, k in zip(pred, known)]))
    return out


def train_speaker(corpus, out_folder, seconds: float = 240.0, seed: int = 0, device: str = "cpu",
                  batch_size: int = 32, lr: float = 2e-3, **arch) -> SpeakerEncoder:
    """Train a SpeakerEncoder on ``corpus.rows("train")`` (every speaker there; the held-out voice
    is never in it) for a wall-clock budget of ``seconds``, save it to ``out_folder`` with
    ``calibrate``'s numbers in config.json's meta, and return it (eval mode).

    Random 1-2 s crops (the embedding must not depend on length or sentence), gain/noise
    augmentation, AM-softmax loss, AdamW with warmup + cosine decay over the budget. Seeded, but
    the number of steps depends on the machine's speed."""
    start = time.perf_counter()
    rows = [r for r in corpus.rows("train") if r["speaker"] != HELDOUT_VOICE]
    if not rows:
        raise ValueError("the corpus has no train split")
    speakers = sorted({r["speaker"] for r in rows})
    label = {s: k for k, s in enumerate(speakers)}
    rng, gen = random.Random(seed), torch.Generator().manual_seed(seed)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = SpeakerEncoder(speakers, **arch).to(device)
        model.features.fit([corpus.audio(r) for r in rng.sample(rows, min(200, len(rows)))])
        opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.01)
        model.train()
        steps, losses = 0, []
        while (frac := (time.perf_counter() - start) / seconds) < 1:
            for g in opt.param_groups:
                g["lr"] = cosine_lr(frac, lr)
            batch = rng.sample(rows, min(batch_size, len(rows)))
            crop = int(SAMPLE_RATE * rng.uniform(1.0, 2.0))
            clips = []
            for r in batch:
                a = corpus.audio(r)
                s = rng.randint(0, max(0, len(a) - crop))
                clips.append(a[s:s + crop])
            wav, lengths = pad_batch(clips)
            wav = augment(wav, gen) * (torch.arange(wav.shape[1]) < lengths[:, None])
            labels = torch.tensor([label[r["speaker"]] for r in batch], device=device)
            loss = F.cross_entropy(model.logits(model(wav.to(device), lengths.to(device)), labels), labels)
            opt.zero_grad()
            loss.backward()
            nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            opt.step()
            steps += 1
            losses.append(loss.item())
    model.eval()
    meta = {"steps": steps, "train_seconds": round(time.perf_counter() - start, 1),
            "final_loss": round(float(np.mean(losses[-20:])), 4) if losses else None}
    if corpus.rows("test"):
        meta.update({k: round(v, 4) if isinstance(v, float) else v for k, v in calibrate(model, corpus).items()})
    model.meta = meta
    model.save_pretrained(out_folder, **meta)
    return model


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description="Train / run the speech evaluation models")
    sub = ap.add_subparsers(dest="cmd", required=True)
    for name, out, secs in (("train-ctc", "assets/speech-ctc", 360), ("train-speaker", "assets/speech-speaker", 240)):
        p = sub.add_parser(name)
        p.add_argument("--out", default=out)
        p.add_argument("--seconds", type=float, default=secs)
    p = sub.add_parser("wer", help="PocketSphinx WER of corpus reference clips")
    p.add_argument("--split", default="test")
    p.add_argument("--n", type=int, default=10)
    p = sub.add_parser("calibrate", help="speaker cosine statistics of a trained encoder")
    p.add_argument("--model", default="assets/speech-speaker")
    for p in sub.choices.values():
        p.add_argument("--corpus", default="runs/speech/corpus")
        p.add_argument("--seed", type=int, default=0)
    a = ap.parse_args(argv)
    corpus = Corpus(a.corpus)
    if a.cmd in ("train-ctc", "train-speaker"):
        model = (train_ctc if a.cmd == "train-ctc" else train_speaker)(corpus, a.out, a.seconds, a.seed)
        model.meta["train_command"] = "python -m benchmarks.metrics.speech_checks " + shlex.join(
            sys.argv[1:] if argv is None else argv)
        model.save_pretrained(a.out, **model.meta)   # the command that reproduces the folder
        print(json.dumps(model.meta))
    elif a.cmd == "calibrate":
        print(json.dumps(calibrate(SpeakerEncoder.from_pretrained(a.model), corpus)))
    else:
        rows = corpus.rows(a.split)[:a.n]
        res = pocketsphinx_wer([corpus.audio(r) for r in rows], [r["text"] for r in rows], seed=a.seed)
        for r, h in zip(res["refs"], res["hyps"]):
            print(f"REF {r}\nHYP {h}")
        print(json.dumps({k: v for k, v in res.items() if k not in ("refs", "hyps")}))


if __name__ == "__main__":
    main()
