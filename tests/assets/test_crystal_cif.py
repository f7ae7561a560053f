"""Quality of the shipped CIF model (assets/crystal-cif) on test structures it never saw, fixed seeds."""
import json
from pathlib import Path

import pytest
import torch

from apps.crystal.model import CrystalGenerator
from modalities.crystal import preprocess_cif

ROOT = Path(__file__).resolve().parents[2]
ASSET = ROOT / "assets" / "crystal-cif"
SAMPLE = json.loads((ROOT / "tests" / "modalities" / "data" / "crystals_test_sample.json").read_text())


@pytest.fixture(scope="module")
def gen():
    return CrystalGenerator.from_pretrained(str(ASSET))


def test_config_records_how_it_was_trained(gen):
    meta = json.loads((ASSET / "config.json").read_text())["meta"]
    assert meta["train_command"].startswith("omniar train crystal --config configs/crystal_cif.yaml")
    assert meta["tokenizer"] == "cif" and meta["max_atoms"] == 48
    assert sum(f.stat().st_size for f in ASSET.iterdir()) < 20 * 2**20


def test_test_set_loss_below_threshold(gen):
    """Per-token loss on 8 test-split CIFs (perov_5 + carbon_24, never trained on)."""
    losses = []
    for raw in SAMPLE["perov_5"] + SAMPLE["carbon_24"]:
        ids = torch.tensor(gen.tok.encode(preprocess_cif(raw)))[: gen.model.args.block_size + 1]
        with torch.no_grad():
            loss, _ = gen.model(ids[None, :-1], targets={"lm": ids[None, 1:]})
        losses.append(float(loss))
    assert sum(losses) / len(losses) < LOSS_MAX, losses


def test_generates_valid_matching_perovskites(gen):
    """Prompted with the compositions of 4 perov_5 test structures, 8 samples each (seeded)."""
    from pymatgen.analysis.structure_matcher import StructureMatcher
    from pymatgen.core import Structure
    m = StructureMatcher(stol=0.5, angle_tol=10, ltol=0.3)
    n_valid = n_match = 0
    for j, raw in enumerate(SAMPLE["perov_5"]):
        gt = Structure.from_str(raw, fmt="cif")
        formula = preprocess_cif(raw).split("\n", 1)[0][len("data_"):]
        cands = gen.generate(formula, n=8, seed=j)
        n_valid += sum(c.valid for c in cands)
        n_match += any(m.fit(c.validity.structure, gt) for c in cands if c.valid)
    assert n_valid / 32 >= VALID_MIN and n_match >= MATCH_MIN, (n_valid, n_match)


def test_diamond_for_c8(gen):
    """The most-sampled valid C8 structure is diamond (carbon_24 is AIRSS carbon at 10 GPa)."""
    cands = gen.generate("C8", n=8, seed=0)
    assert cands[0].valid and cands[0].validity.spacegroup == "Fd-3m"
    assert 3.3 < cands[0].validity.structure.lattice.a < 3.7


# measured on the shipped model: loss 0.268 nats/token, 32/32 valid, 3 of 4 matched
LOSS_MAX = 0.30
VALID_MIN = 0.9
MATCH_MIN = 2
