"""HF import/export: tiny random transformers models -> load_hf -> same logits (fp32, 1e-4)."""
import warnings

import pytest
import torch

transformers = pytest.importorskip("transformers")

from backbone.container import OmniModel, part  # noqa: E402
from backbone.hf_import import export_hf, load_hf  # noqa: E402
from backbone.transformer import GPT2_STYLE, ModelArgs  # noqa: E402
from heads.lm import LMHead  # noqa: E402

V = 97
LLAMA_KW = dict(vocab_size=V, hidden_size=64, intermediate_size=96, num_hidden_layers=2,
                num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64,
                bos_token_id=None, eos_token_id=None, pad_token_id=None)


def _hf(name, **kw):
    cfg = getattr(transformers, name + "Config")(initializer_range=0.1, **kw)  # O(1) logits
    torch.manual_seed(0)
    model = getattr(transformers, name + "ForCausalLM" if name != "GPT2" else "GPT2LMHeadModel")(cfg)
    with torch.no_grad():  # HF inits norms to 1 and biases to 0: perturb so the mapping is tested
        for n, p in model.named_parameters():
            if p.dim() == 1:
                p.add_(0.1 * torch.randn_like(p))
    return model.eval()


def _ids(T=24, B=2, seed=1):
    return torch.randint(0, V, (B, T), generator=torch.Generator().manual_seed(seed))


def _ours_logits(model: OmniModel, ids):
    with torch.no_grad():
        return model.heads["lm"](model(ids))


def _check(hf_model, tmp_path, ids=None):
    ids = _ids() if ids is None else ids
    hf_model.save_pretrained(tmp_path, safe_serialization=True)
    ours = load_hf(tmp_path)
    with torch.no_grad():
        ref = hf_model(ids).logits
    got = _ours_logits(ours, ids)
    torch.testing.assert_close(got, ref, atol=1e-4, rtol=1e-4)
    return ours


def test_gpt2(tmp_path):
    m = _hf("GPT2", vocab_size=V, n_embd=64, n_layer=2, n_head=4, n_positions=64,
            bos_token_id=None, eos_token_id=None)
    ours = _check(m, tmp_path)
    assert ours.config["meta"]["hf_model_type"] == "gpt2"
    assert ours.heads["lm"].proj.weight is ours.backbone.tok_embeddings.weight
    assert not any(t.is_meta for t in [*ours.parameters(), *ours.buffers()])
    ours.save_pretrained(tmp_path / "omni")  # and our own format round-trips
    ids = _ids()
    assert torch.equal(_ours_logits(OmniModel.from_pretrained(tmp_path / "omni"), ids), _ours_logits(ours, ids))


def test_gpt2_bare_names_bf16(tmp_path):
    """openai's original checkpoint names ("h.0.attn...", no "transformer." prefix); dtype cast."""
    from safetensors.torch import load_file, save_file
    m = _hf("GPT2", vocab_size=V, n_embd=32, n_layer=1, n_head=2, n_positions=32,
            bos_token_id=None, eos_token_id=None)
    m.save_pretrained(tmp_path, safe_serialization=True)
    sd = load_file(tmp_path / "model.safetensors")
    save_file({k.removeprefix("transformer."): v for k, v in sd.items()}, tmp_path / "model.safetensors")
    ours = load_hf(tmp_path, dtype=torch.bfloat16)
    assert ours.backbone.tok_embeddings.weight.dtype == torch.bfloat16
    ids = _ids(T=8)
    with torch.no_grad():
        torch.testing.assert_close(_ours_logits(ours, ids).float(), m(ids).logits, atol=0.1, rtol=0.05)


def test_llama_gqa_untied(tmp_path):
    ours = _check(_hf("Llama", **LLAMA_KW, tie_word_embeddings=False), tmp_path)
    assert ours.args.n_kv_head == 2 and not ours.heads["lm"].tie


def test_llama_tied_biases_headdim(tmp_path):
    ours = _check(_hf("Llama", **LLAMA_KW, tie_word_embeddings=True, attention_bias=True,
                      mlp_bias=True, head_dim=24), tmp_path)
    assert ours.args.head_dim == 24 and ours.heads["lm"].tie


def test_llama3_rope_scaling(tmp_path):
    scaling = dict(rope_type="llama3", factor=8.0, low_freq_factor=1.0, high_freq_factor=4.0,
                   original_max_position_embeddings=16)
    ours = _check(_hf("Llama", **LLAMA_KW, rope_theta=500000.0, rope_scaling=scaling), tmp_path,
                  _ids(T=60, B=1))
    assert ours.args.rope_scaling["rope_type"] == "llama3" and ours.args.rope_theta == 500000.0


def test_qwen2(tmp_path):
    ours = _check(_hf("Qwen2", **LLAMA_KW), tmp_path)
    assert ours.args.qkv_bias and not ours.args.out_bias


def test_mistral_sliding_window_clamps(tmp_path):
    with pytest.warns(UserWarning, match="sliding_window"):
        ours = _check(_hf("Mistral", **LLAMA_KW, sliding_window=32), tmp_path, _ids(T=32))
    assert ours.args.block_size == 32


def test_sharded_checkpoint(tmp_path):
    m = _hf("Llama", **LLAMA_KW)
    m.save_pretrained(tmp_path, safe_serialization=True, max_shard_size="20KB")
    assert (tmp_path / "model.safetensors.index.json").is_file()
    ids = _ids()
    with torch.no_grad():
        torch.testing.assert_close(_ours_logits(load_hf(tmp_path), ids), m(ids).logits, atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("model_type", ["gpt2", "llama"])
def test_export_roundtrip(tmp_path, model_type):
    style = GPT2_STYLE if model_type == "gpt2" else dict(n_kv_head=2, rope_theta=5e5)
    args = ModelArgs(vocab_size=V, n_layer=2, n_head=4, dim=64, block_size=64, **style)
    torch.manual_seed(0)
    ours = OmniModel.build(args, {"lm": part(LMHead, dim=64, vocab_size=V, tie=model_type == "gpt2")}).eval()
    export_hf(ours, tmp_path, model_type)
    cls = transformers.GPT2LMHeadModel if model_type == "gpt2" else transformers.LlamaForCausalLM
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        hf = cls.from_pretrained(tmp_path).eval()
    ids = _ids()
    with torch.no_grad():
        torch.testing.assert_close(hf(ids).logits, _ours_logits(ours, ids), atol=1e-4, rtol=1e-4)
    back = load_hf(tmp_path)  # and back again: identical tensors
    for (k, a), b in zip(ours.state_dict().items(), back.state_dict().values()):
        assert torch.equal(a, b), k


def test_missing_folder(tmp_path):
    with pytest.raises(FileNotFoundError, match="nothing is downloaded"):
        load_hf(tmp_path / "nope")


def test_pickle_only_refused(tmp_path):
    (tmp_path / "config.json").write_text('{"model_type": "gpt2", "vocab_size": 10, "n_layer": 1, '
                                          '"n_head": 1, "n_embd": 8, "n_positions": 8}')
    (tmp_path / "pytorch_model.bin").write_bytes(b"not really a pickle")
    with pytest.raises(ValueError, match="pickle"):
        load_hf(tmp_path)


def test_unsupported_model_type(tmp_path):
    (tmp_path / "config.json").write_text('{"model_type": "bert"}')
    with pytest.raises(ValueError, match="supported: .*gpt2"):
        load_hf(tmp_path)


def test_llama_greedy_generate_matches_hf(tmp_path):
    """KV-cache decoding with RoPE positions: our generate == HF generate, token for token."""
    from backbone.generate import generate
    from backbone.sampling import SamplingParams
    m = _hf("Llama", **LLAMA_KW)
    m.save_pretrained(tmp_path, safe_serialization=True)
    ours = load_hf(tmp_path)
    prompt = _ids(T=5, B=1)
    with torch.no_grad():
        ref = m.generate(prompt, attention_mask=torch.ones_like(prompt), max_new_tokens=12, min_new_tokens=12,
                         do_sample=False, pad_token_id=0)[0, 5:].tolist()
    got = [int(t[0]) for t in generate(ours, prompt.tolist(), SamplingParams(temperature=0, max_new_tokens=12))]
    assert got == ref
