"""OpenCLIP text tower: equals an independent implementation (transformers CLIPTextModel) on the same weights."""

import pytest
import torch

from conftest import FLOAT32_REL
from stablesr.models.text_encoder import (
    END_TOKEN,
    START_TOKEN,
    OpenCLIPTextEncoder,
    PromptEmbeddings,
    empty_prompt_tokens,
)


def to_transformers_state(state: dict, layers_used: int) -> dict:
    """OpenCLIP keys -> transformers CLIPTextModel keys (fused in_proj split into q, k, v)."""
    out = {"embeddings.token_embedding.weight": state["token_embedding.weight"],
           "embeddings.position_embedding.weight": state["positional_embedding"],
           "final_layer_norm.weight": state["ln_final.weight"],
           "final_layer_norm.bias": state["ln_final.bias"]}
    for i in range(layers_used):
        src, dst = f"transformer.resblocks.{i}.", f"encoder.layers.{i}."
        for kind in ("weight", "bias"):
            q, k, v = state[src + f"attn.in_proj_{kind}"].chunk(3)
            out[dst + f"self_attn.q_proj.{kind}"], out[dst + f"self_attn.k_proj.{kind}"] = q, k
            out[dst + f"self_attn.v_proj.{kind}"] = v
            out[dst + f"self_attn.out_proj.{kind}"] = state[src + f"attn.out_proj.{kind}"]
            out[dst + f"layer_norm1.{kind}"] = state[src + f"ln_1.{kind}"]
            out[dst + f"layer_norm2.{kind}"] = state[src + f"ln_2.{kind}"]
            out[dst + f"mlp.fc1.{kind}"] = state[src + f"mlp.c_fc.{kind}"]
            out[dst + f"mlp.fc2.{kind}"] = state[src + f"mlp.c_proj.{kind}"]
    return out


def test_penultimate_layer_matches_transformers_clip():
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(0)
    ours = OpenCLIPTextEncoder(vocab_size=49408, width=64, layers=3, heads=4, embed_dim=32).eval()
    for p in ours.parameters():  # make LayerNorm affine non-trivial
        p.data.add_(0.05 * torch.randn_like(p))
    config = transformers.CLIPTextConfig(vocab_size=49408, hidden_size=64, intermediate_size=256, num_hidden_layers=2,
                                         num_attention_heads=4, max_position_embeddings=77, hidden_act="gelu",
                                         layer_norm_eps=1e-5, projection_dim=32)
    reference = transformers.CLIPTextModel(config).eval()
    state = to_transformers_state(ours.state_dict(), 2)
    prefix = "text_model." if any(k.startswith("text_model.") for k in reference.state_dict()) else ""
    missing, unexpected = reference.load_state_dict({prefix + k: v for k, v in state.items()}, strict=False)
    assert not unexpected and all("position_ids" in k for k in missing)
    tokens = torch.randint(0, 49406, (2, 77))
    tokens[:, 0] = START_TOKEN
    with torch.no_grad():
        expected = reference(tokens).last_hidden_state
        actual = ours(tokens)
    assert (actual - expected).abs().max().item() < FLOAT32_REL * max(1.0, expected.abs().max().item())


def test_empty_prompt_tokens_are_start_end_then_zero_padding():
    tokens = empty_prompt_tokens()
    assert tokens.shape == (1, 77)
    assert tokens[0, :2].tolist() == [START_TOKEN, END_TOKEN]
    assert tokens[0, 2:].eq(0).all()


def test_prompt_embeddings_round_trip_and_lookup(tmp_path):
    null, negative = torch.randn(1, 77, 16), torch.randn(1, 77, 16)
    cache = PromptEmbeddings.from_tensors({"null": null, "negative": negative}, {"null": "", "negative": "blurry"})
    cache.save_pretrained(tmp_path)
    loaded = PromptEmbeddings.from_pretrained(tmp_path)
    assert torch.equal(loaded.find(""), null)
    assert torch.equal(loaded.find("blurry"), negative)
    assert loaded.find("sharp") is None


def test_known_prompt_tokens_wrap_the_official_prompts_in_start_end_and_zero_padding():
    from stablesr.models.text_encoder import OFFICIAL_NEGATIVE_PROMPT, OFFICIAL_POSITIVE_PROMPT, known_prompt_tokens

    for text, length in ((OFFICIAL_NEGATIVE_PROMPT, 23), (OFFICIAL_POSITIVE_PROMPT, 24)):
        tokens = known_prompt_tokens(text)[0]
        assert tokens[0] == START_TOKEN and tokens[length - 1] == END_TOKEN
        assert tokens[1 : length - 1].gt(0).all() and tokens[1 : length - 1].lt(START_TOKEN).all()
        assert tokens[length:].eq(0).all()
    assert known_prompt_tokens("a photo") is None  # anything else needs a tokenizer
