"""Frozen encoders that turn conditioning inputs (instructions) into goal vectors for the denoiser."""

from mode_policy.nn.encoders.language import (
    LANGUAGE_ENCODERS,
    CLIPTextEncoder,
    LanguageEncoder,
    MiniLMEncoder,
    OneHotTaskEncoder,
    make_language_encoder,
)

__all__ = [
    "LANGUAGE_ENCODERS",
    "CLIPTextEncoder",
    "LanguageEncoder",
    "MiniLMEncoder",
    "OneHotTaskEncoder",
    "make_language_encoder",
]
