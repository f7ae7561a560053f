"""Train the speech codec (modalities/speech_codec.py) on the espeak-ng corpus with the one trainer.

    omniar train codec --config configs/speech_codec.yaml

The corpus is built first if its folder is missing (modalities/speech_corpus.py, about a minute).
"""
from __future__ import annotations

from pathlib import Path

from backbone.train import TrainConfig, run_recipe
from modalities.speech_codec import Codec, CodecTask
from modalities.speech_corpus import Corpus, build_corpus


def load_corpus(d: dict) -> Corpus:
    """The ``data:`` config -> a Corpus, building it when ``data.folder`` does not exist yet."""
    folder = Path(d.get("folder", "runs/speech/corpus"))
    if not (folder / "manifest.jsonl").is_file():
        build_corpus(folder, d.get("n_train", 6000), d.get("n_val", 100), d.get("n_test", 100), d.get("seed", 0))
    return Corpus(folder)


def build(cfg: dict, tcfg: TrainConfig) -> tuple[Codec, CodecTask, None]:
    """The recipe's part for ``run_recipe``: the corpus, the codec and its waveform batches.
    CodecTask crops raw waveforms for the codec autoencoder (``Codec.forward(wav)``), not token
    sequences for the backbone, so its batches do not go through ``backbone.sequence.pack``."""
    corpus = load_corpus(cfg.get("data", {}))
    codec = Codec(cfg.get("codec"))
    codec.meta = {}   # run_recipe records the training command and final metrics here (config.json)
    return codec, CodecTask(corpus, tcfg.batch_size, cfg.get("data", {}).get("seconds", 1.0), tcfg.seed), None


def run(cfg: dict, out: str | None = None, device: str = "cpu", resume: bool = False) -> tuple[Codec, dict]:
    return run_recipe(cfg, build, out, device, resume, data_keys={"folder", "n_train", "n_val", "n_test", "seed", "seconds"})
