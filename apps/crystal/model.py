"""Crystal structure generation (CrystaLLM): prompt with a composition, sample N CIFs, check them.

    gen = CrystalGenerator.from_pretrained("assets/crystal-cif")
    cands = gen.generate("SrTiO3", n=10, spacegroup="Pm-3m", seed=0)   # ranked, valid first

CLI: ``omniar crystal "SrTiO3" --n 10 [--spacegroup Pm-3m] -o out/`` writes one CIF per
candidate (symmetry operators restored, so any CIF reader opens them) and ``summary.csv``.
"""
from __future__ import annotations

import csv
import re
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F

from backbone.container import OmniModel
from backbone.generate import generate
from backbone.sampling import SamplingParams
from modalities.crystal import fix_volume, make_prompt, restore_symmetry_ops
from modalities.crystal_checks import Validity, check_cif
from modalities.text import load_tokenizer

DEFAULT_MODEL = "assets/crystal-cif"


@dataclass
class Candidate:
    """One generated structure. ``cif`` is the canonical text the model wrote."""
    cif: str
    validity: Validity
    logprob: float            # mean log-likelihood per generated token under the model
    finished: bool            # the model closed the CIF itself (emitted the end token)
    index: int = 0            # position in the sampled batch (before ranking)

    @property
    def valid(self) -> bool:
        return self.validity.valid

    @property
    def reasons(self) -> list[str]:
        return self.validity.reasons

    def full_cif(self) -> str:
        """A standard CIF: symmetry operators written back and the volume recomputed from the cell
        (the raw text if it cannot be restored)."""
        try:
            return restore_symmetry_ops(fix_volume(self.cif))
        except ValueError:
            return self.cif


class CrystalGenerator:
    """A CIF language model plus its tokenizer, sampling and validity ranking."""

    def __init__(self, model: OmniModel, tokenizer, max_atoms: int | None = None):
        if getattr(tokenizer, "kind", None) != "cif":
            raise ValueError("this checkpoint has no CIF tokenizer; it is not a crystal model")
        self.model, self.tok = model.eval(), tokenizer
        # the largest cell in the training data (recorded by the recipe); without it, ~15 tokens
        # per atom (symmetry halves the ~30 of a site row) beyond a 128-token header
        self.max_atoms = max_atoms or model.config.get("meta", {}).get(
            "max_atoms", max(4, (model.args.block_size - 128) // 15))

    @classmethod
    def from_pretrained(cls, path: str = DEFAULT_MODEL, device: str = "cpu", dtype=None) -> "CrystalGenerator":
        return cls(OmniModel.from_pretrained(path, device=device, dtype=dtype), load_tokenizer(path))

    @property
    def device(self):
        return next(self.model.parameters()).device

    def prompt(self, composition: str, spacegroup: str | None = None) -> str:
        """The ``data_...`` prompt; ValueError for unknown elements, bad formulas, huge cells."""
        return make_prompt(composition, spacegroup, self.max_atoms)

    @torch.inference_mode()
    def sample(self, prompt: str, n: int, temperature: float = 1.0, top_k: int | None = 10,
               seed: int | None = 0, max_new_tokens: int | None = None) -> list[tuple[str, bool, list[int]]]:
        """N continuations of ``prompt`` in one batch -> [(full text, finished, token ids)].

        The ids are the prompt's plus the generated ones (end token included): decoding is not
        invertible for arbitrary samples, so likelihoods are computed on ids, never re-encoded.

        ``max_new_tokens`` defaults to the rest of the context: the model was trained on windows
        that start at ``data_``, so a CIF that outgrows the window would lose its header.
        """
        if not 1 <= n <= 256:
            raise ValueError(f"n must be between 1 and 256, got {n}")
        ids = self.tok.encode(prompt)
        max_new_tokens = max_new_tokens or self.model.args.block_size - len(ids)
        params = SamplingParams(temperature=temperature, top_k=top_k, max_new_tokens=max_new_tokens,
                                stop_tokens=[self.tok.eos_id], seed=seed).validate()
        rows: list[list[int]] = [[] for _ in range(n)]
        for tok in generate(self.model, [ids] * n, params):
            for r, t in enumerate(tok.tolist()):
                if t >= 0:
                    rows[r].append(t)
        out = []
        for r in rows:
            finished = bool(r) and r[-1] == self.tok.eos_id
            body = self.tok.decode(r[:-1] if finished else r)
            text = prompt + body + ("\n" if finished and not body.endswith("\n") else "")
            out.append((text, finished, ids + r))
        return out

    @torch.inference_mode()
    def logprobs(self, seqs: list[list[int]], prompt_len: int) -> list[float]:
        """Mean log-likelihood of each id sequence's tokens after the first ``prompt_len`` (one forward)."""
        seqs = [s[: self.model.args.block_size + 1] for s in seqs]
        L = max(len(s) for s in seqs)
        x = torch.zeros(len(seqs), L, dtype=torch.long)
        for i, s in enumerate(seqs):
            x[i, : len(s)] = torch.tensor(s)
        x = x.to(self.device)
        h = self.model(x[:, :-1])
        lp = F.log_softmax(self.model.heads["lm"](h).float(), -1).gather(-1, x[:, 1:, None])[..., 0]
        out = []
        for i, s in enumerate(seqs):
            span = lp[i, prompt_len - 1: len(s) - 1]
            out.append(float(span.mean()) if span.numel() else float("-inf"))
        return out

    def generate(self, composition: str, n: int = 10, spacegroup: str | None = None,
                 temperature: float = 0.7, top_k: int | None = 10, seed: int | None = 0,
                 max_new_tokens: int | None = None, rank: str = "consensus") -> list[Candidate]:
        """Sample ``n`` structures and return them ranked, valid first.

        ``rank="likelihood"`` orders the valid ones by mean token log-likelihood;
        ``rank="consensus"`` by how many valid samples are the same structure (StructureMatcher
        groups, largest first; self-consistency voting), then by likelihood.
        """
        if rank not in ("likelihood", "consensus"):
            raise ValueError(f"rank must be 'likelihood' or 'consensus', got {rank!r}")
        prompt = self.prompt(composition, spacegroup)
        samples = self.sample(prompt, n, temperature, top_k, seed, max_new_tokens)
        return rank_candidates(self.candidates(prompt, samples), rank)

    def candidates(self, prompt: str, samples: list[tuple[str, bool, list[int]]]) -> list[Candidate]:
        """``sample`` output -> unranked Candidates (validity checked, likelihood scored)."""
        lps = self.logprobs([ids for _, _, ids in samples], len(self.tok.encode(prompt)))
        cands = []
        for i, ((text, finished, _), lp) in enumerate(zip(samples, lps)):
            v = check_cif(text)
            if not finished:
                v.reasons.insert(0, "unfinished: the CIF did not end within the token budget")
            cands.append(Candidate(text, v, lp, finished, i))
        return cands


def rank_candidates(cands: list[Candidate], how: str = "likelihood") -> list[Candidate]:
    """Valid first; then by consensus votes (``how="consensus"``) and mean log-likelihood."""
    votes = {id(c): 0 for c in cands}
    if how == "consensus":
        from pymatgen.analysis.structure_matcher import StructureMatcher  # slow to load: only when ranking
        # group in sampling order: StructureMatcher grouping is greedy, so the order must not
        # depend on how the list was sorted before
        valid = sorted((c for c in cands if c.valid), key=lambda c: c.index)
        for group in StructureMatcher().group_structures([c.validity.structure for c in valid]):
            members = [c for c in valid if any(c.validity.structure is s for s in group)]
            for c in members:
                votes[id(c)] = len(members)
    return sorted(cands, key=lambda c: (not c.valid, -votes[id(c)], -c.logprob))


def _cell(c: Candidate) -> dict:
    s = c.validity.structure
    lat = s.lattice if s is not None else None
    return {"a": round(lat.a, 3) if lat else "", "b": round(lat.b, 3) if lat else "",
            "c": round(lat.c, 3) if lat else "", "volume": round(lat.volume, 2) if lat else ""}


def write_candidates(cands: list[Candidate], composition: str, out_dir: str | Path) -> Path:
    """Write ``<formula>_<rank>.cif`` files and ``summary.csv``; returns the summary path."""
    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise ValueError(f"output folder {out} is an existing file; choose a folder with -o")
    out.mkdir(parents=True, exist_ok=True)
    stem = re.sub(r"[^A-Za-z0-9]", "", composition) or "crystal"
    rows = []
    for rank, c in enumerate(cands, 1):
        name = f"{stem}_{rank:02d}.cif"
        (out / name).write_text(c.full_cif())
        rows.append({"rank": rank, "file": name, "valid": c.valid, "spacegroup": c.validity.spacegroup or "",
                     **_cell(c), "logprob": round(c.logprob, 4), "reasons": "; ".join(c.reasons)})
    summary = out / "summary.csv"
    with open(summary, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    return summary


def main(a) -> None:
    """``omniar crystal``: print a summary table and write the files."""
    gen = CrystalGenerator.from_pretrained(a.model, device=a.device)
    cands = gen.generate(a.composition, n=a.n, spacegroup=a.spacegroup, temperature=a.temperature,
                         top_k=a.top_k, seed=a.seed, max_new_tokens=a.max_new_tokens, rank=a.rank)
    summary = write_candidates(cands, a.composition, a.out)
    print(f"{'rank':>4} {'valid':>5} {'space group':>12} {'a':>7} {'b':>7} {'c':>7} {'logprob':>8}  reasons")
    for rank, c in enumerate(cands, 1):
        cell = _cell(c)
        print(f"{rank:>4} {str(c.valid):>5} {c.validity.spacegroup or '-':>12} {cell['a']:>7} {cell['b']:>7} "
              f"{cell['c']:>7} {c.logprob:>8.3f}  {'; '.join(c.reasons)}")
    n_valid = sum(c.valid for c in cands)
    print(f"{n_valid}/{len(cands)} valid; CIFs and {summary.name} in {summary.parent}")
