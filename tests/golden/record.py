"""Record the golden outputs of tests/golden/cases.py (run from the repository root).

    python -m tests.golden.record [NAME ...]
Also makes the inputs once: the voice prompt (espeak-ng), the series CSV, the caption scene and the
tiny next-scale / next-cell checkpoints.
"""
from __future__ import annotations

import sys
import tempfile
from pathlib import Path

import numpy as np

from tests.golden.cases import CASES, DATA, NEXT_CELL, NEXT_SCALE, REF_TEXT, REF_WAV, SERIES_CSV, run_case, save


def make_inputs():
    DATA.mkdir(parents=True, exist_ok=True)
    if not SERIES_CSV.exists():
        g = np.random.default_rng(0)
        t = np.arange(240)
        y = 10 + 0.02 * t + 3 * np.sin(2 * np.pi * t / 24) + g.normal(0, 0.3, len(t))
        SERIES_CSV.write_text("t,y\n" + "".join(f"{i},{v:.4f}\n" for i, v in zip(t, y)))
    if not REF_WAV.exists():
        import soundfile as sf
        from modalities.speech_corpus import synth
        wav, _ = synth(REF_TEXT, voice="en-us+f3")
        sf.write(str(REF_WAV), wav, 16000, subtype="PCM_16")
    scene = DATA / "scene.png"
    if not scene.exists():
        from PIL import Image
        from modalities.image_shapes import make_scenes
        Image.fromarray(make_scenes(1, "test", seed=5)[0][2]).save(scene)
    for folder, cfg in ((NEXT_SCALE, "tests/golden/t2i_next_scale.yaml"), (NEXT_CELL, "tests/golden/t2i_next_cell.yaml")):
        if not folder.exists():
            from apps.cli import main
            rc = main(["train", "t2i", "--config", cfg, "--out", str(folder), "--run-dir",
                       tempfile.mkdtemp(), "--max-steps", "2", "--set", "batch_size=4", "--set", "eval_every=0"])
            assert rc == 0


def main(names):
    make_inputs()
    with tempfile.TemporaryDirectory() as d:
        for name in names or CASES:
            save(name, run_case(name, Path(d)))
            print("recorded", name)


if __name__ == "__main__":
    main(sys.argv[1:])
