"""Language encoders: one-hot, the offline MiniLM, local CLIP weights, caching and the factory."""

import json

import pytest
import torch

from mode_policy.nn.encoders import (
    CLIPTextEncoder,
    LanguageEncoder,
    MiniLMEncoder,
    OneHotTaskEncoder,
    make_language_encoder,
)

TASKS = ["open the drawer", "close the drawer", "press the button"]


def test_onehot_encodes_task_positions_and_caches():
    encoder = OneHotTaskEncoder(TASKS)
    assert encoder.dim == 3
    out = encoder.encode(["press the button", "open the drawer", "press the button"])
    assert out.dtype == torch.float32 and not out.requires_grad
    torch.testing.assert_close(out, torch.tensor([[0.0, 0, 1], [1, 0, 0], [0, 0, 1]]))
    assert (encoder.cache_misses, encoder.cache_hits, encoder.cache_size) == (2, 1, 2)
    encoder.encode(["open the drawer"])
    assert (encoder.cache_misses, encoder.cache_hits) == (2, 2)
    assert encoder.encode([]).shape == (0, 3)


def test_onehot_errors_are_clear():
    encoder = OneHotTaskEncoder(TASKS)
    with pytest.raises(
        ValueError, match=r"unknown task 'fly to the moon' .* knows 3 tasks: 'open the drawer'"
    ):
        encoder.encode(["open the drawer", "fly to the moon"])
    assert encoder.cache_size == 0  # a failed call caches nothing
    with pytest.raises(TypeError, match="wrap it"):
        encoder.encode("open the drawer")
    with pytest.raises(ValueError, match="at least one task"):
        OneHotTaskEncoder([])
    with pytest.raises(ValueError, match="distinct"):
        OneHotTaskEncoder(["a", "b", "a"])


def test_factory_names_and_errors(tmp_path):
    assert isinstance(make_language_encoder("onehot", tasks=TASKS), OneHotTaskEncoder)
    minilm = make_language_encoder("minilm")
    assert isinstance(minilm, MiniLMEncoder) and minilm.dim == 384 and not minilm.loaded  # lazy
    with pytest.raises(ValueError, match=r"unknown language encoder 'bert'.*minilm, onehot, clip"):
        make_language_encoder("bert")
    with pytest.raises(ValueError, match="'onehot' needs tasks"):
        make_language_encoder("onehot")
    with pytest.raises(ValueError, match="'clip' needs path"):
        make_language_encoder("clip")
    with pytest.raises(FileNotFoundError, match=r"no CLIP text weights at .*downloads nothing"):
        make_language_encoder("clip", path=tmp_path / "clip-vit-b-32")
    with pytest.raises(FileNotFoundError, match="no sentence-transformers model directory"):
        MiniLMEncoder(tmp_path / "nowhere")


def test_encoder_shape_contract_is_checked():
    class Broken(LanguageEncoder):
        dim = 4

        def _encode_uncached(self, texts):
            return torch.zeros(len(texts), 3)

    with pytest.raises(RuntimeError, match=r"returned shape \(2, 3\) for 2 strings, expected \(2, 4\)"):
        Broken().encode(["a", "b"])


@pytest.mark.slow
def test_minilm_loads_offline_and_is_deterministic(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    encoder = MiniLMEncoder()
    first = encoder.encode(["open the drawer", "press the button"])
    assert encoder.loaded and first.shape == (2, 384) and first.dtype == torch.float32
    torch.testing.assert_close(first.norm(dim=-1), torch.ones(2))
    assert not torch.allclose(first[0], first[1], atol=1e-2)  # different instructions differ
    misses = encoder.cache_misses
    again = encoder.encode(["press the button", "open the drawer"])
    assert encoder.cache_misses == misses and encoder.cache_hits == 2  # served from the cache
    torch.testing.assert_close(again, first.flip(0), rtol=0, atol=0)
    fresh = MiniLMEncoder()
    fresh._model = encoder.model  # same weights, empty cache: recomputing gives the same embedding
    torch.testing.assert_close(fresh.encode(["open the drawer"])[0], first[0], rtol=1e-5, atol=1e-6)
    # Embeddings feed a trainable projection: they must be ordinary tensors, not inference tensors.
    projection = torch.nn.Linear(384, 2)
    projection(first).sum().backward()
    assert projection.weight.grad is not None


def _tiny_clip(directory):
    """A randomly initialised 8-d CLIP text tower and a character-level tokenizer, saved locally."""
    transformers = pytest.importorskip("transformers")
    directory.mkdir()
    vocab = {"<|startoftext|>": 0, "<|endoftext|>": 1, "!": 2}
    for char in "abcdefghijklmnopqrstuvwxyz":
        vocab[char] = len(vocab)
        vocab[char + "</w>"] = len(vocab)
    (directory / "vocab.json").write_text(json.dumps(vocab))
    (directory / "merges.txt").write_text("#version: 0.2\n")
    tokenizer = transformers.CLIPTokenizer(str(directory / "vocab.json"), str(directory / "merges.txt"))
    config = transformers.CLIPTextConfig(
        vocab_size=len(vocab), hidden_size=16, intermediate_size=32, num_hidden_layers=1,
        num_attention_heads=2, projection_dim=8, max_position_embeddings=32,
        bos_token_id=0, eos_token_id=1, pad_token_id=1,
    )  # fmt: skip
    torch.manual_seed(0)
    transformers.CLIPTextModelWithProjection(config).save_pretrained(str(directory))
    tokenizer.save_pretrained(str(directory))
    return directory


def test_clip_from_local_weights_round_trip(tmp_path):
    path = _tiny_clip(tmp_path / "clip")
    encoder = make_language_encoder("clip", path=path)
    assert isinstance(encoder, CLIPTextEncoder) and encoder.dim == 8 and not encoder.loaded
    out = encoder.encode(["open the drawer", "press the button"])
    assert out.shape == (2, 8) and out.dtype == torch.float32
    assert not torch.allclose(out[0], out[1])
    again = CLIPTextEncoder(path).encode(["press the button"])
    torch.testing.assert_close(again[0], out[1], rtol=1e-5, atol=1e-6)


def test_policy_rebuilds_a_clip_encoder_from_its_config(tmp_path):
    from mode_policy.policies import MoDEPolicy
    from tests.policies.common import make_obs, tiny_config, tiny_stats

    path = _tiny_clip(tmp_path / "clip")
    policy = MoDEPolicy(tiny_config(language_encoder="clip", language_encoder_path=str(path)), tiny_stats())
    assert policy.config.denoiser.goal_dim == 8  # read from the checkpoint
    policy.eval()
    obs = make_obs(policy.config)
    expected = policy.predict_action_chunk(obs, generator=torch.Generator().manual_seed(0))
    loaded = MoDEPolicy.from_pretrained(policy.save_pretrained(tmp_path / "policy"))
    assert isinstance(loaded.language_encoder, CLIPTextEncoder)
    actions = loaded.predict_action_chunk(obs, generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(actions, expected, rtol=1e-5, atol=1e-6)
