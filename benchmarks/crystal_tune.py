"""Pick the sampling temperature on held-out *val* structures, never on test.

The recipe trains on the first 95% of the shuffled val CIFs (apps/text/recipe.py, ``cif_csv``);
this script prompts with the compositions of the last 5% (never trained on) and reports validity
and match@1 / match@k per temperature, per dataset. crystal_eval.py then runs at the chosen value.

    python -m benchmarks.crystal_tune --temperatures 0.7 1.0 --n 12 --k 20
"""
from __future__ import annotations

import argparse
import random
import re
import warnings

import numpy as np
import torch

from apps.crystal.model import CrystalGenerator, rank_candidates
from apps.text.recipe import load_config, read_corpus
from benchmarks.common import print_table, write_result
from benchmarks.crystal_eval import matcher
from modalities.crystal import cif_to_structure

warnings.filterwarnings("ignore")


def heldout(config: str) -> list[str]:
    data = load_config(config)["data"]
    text = read_corpus(data)
    split = int(len(text) * data.get("train_fraction", 0.9))
    split = text.index("data_", split)
    return [c + "\n" for c in text[split:].split("\n\n") if c.strip()]


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="assets/crystal-cif")
    p.add_argument("--config", default="configs/crystal_cif.yaml")
    p.add_argument("--temperatures", type=float, nargs="+", default=[0.7, 1.0])
    p.add_argument("--n", type=int, default=12, help="held-out structures per dataset")
    p.add_argument("--k", type=int, default=20)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--name", default="crystal_tune", help="results file name (benchmarks/results/NAME.json)")
    a = p.parse_args(argv)
    torch.set_num_threads(a.threads)
    gen, m = CrystalGenerator.from_pretrained(a.model), matcher()
    cifs = heldout(a.config)
    is_carbon = [bool(re.fullmatch(r"data_C\d+", c.split("\n", 1)[0])) for c in cifs]
    groups = {"perov_5": [c for c, cb in zip(cifs, is_carbon) if not cb],
              "carbon_24": [c for c, cb in zip(cifs, is_carbon) if cb]}
    rows = []
    for t in a.temperatures:
        for name, pool in groups.items():
            pick = random.Random(0).sample(pool, min(a.n, len(pool)))
            valid, m1, cons, first, mk = [], [], [], [], []
            for j, c in enumerate(pick):
                gt = cif_to_structure(c)
                formula = c.split("\n", 1)[0][5:]
                cands = gen.generate(formula, n=a.k, temperature=t, seed=j, rank="likelihood")
                valid.append(np.mean([x.valid for x in cands]))
                ok = [x.validity.structure for x in cands if x.valid]
                fits = [m.fit(s, gt) for s in ok]
                m1.append(float(bool(fits) and fits[0]))
                top = rank_candidates(cands, "consensus")[0] if ok else None
                cons.append(float(top is not None and top.valid and m.fit(top.validity.structure, gt)))
                c0 = next(x for x in cands if x.index == 0)  # one unranked sample (CrystaLLM's n=1)
                first.append(float(c0.valid and m.fit(c0.validity.structure, gt)))
                mk.append(float(any(fits)))
            rows.append({"temperature": t, "dataset": name, "n": len(pick), "valid": float(np.mean(valid)),
                         "match@1_likelihood": float(np.mean(m1)), "match@1_unranked": float(np.mean(first)),
                         "match@1_consensus": float(np.mean(cons)),
                         f"match@{a.k}": float(np.mean(mk))})
            print(rows[-1], flush=True)
    print_table(rows, ["temperature", "dataset", "n", "valid", "match@1_likelihood", "match@1_unranked", "match@1_consensus",
                       f"match@{a.k}"])
    write_result(a.name, {"settings": vars(a), "split": "held-out 5% of the val CIFs", "rows": rows})


if __name__ == "__main__":
    main()
