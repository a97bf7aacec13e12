"""Denoisers by kind: each denoiser class registers the ``kind`` its config.json carries.

@DENOISERS.register("cnn")
class CNNDenoiser(EDMDenoiser): config_class = CNNDenoiserConfig

``load_denoiser(dir)`` and ``denoiser_config_from_dict(values)`` pick the class from the tag; configs
written before the tag existed (MoDE's) carry none and read as ``"mode"``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from mode_policy.config_io import read_config_json
from mode_policy.registry import Registry

DENOISERS: Registry = Registry(
    "denoiser kind",
    builtins=("mode_policy.nn.denoiser", "mode_policy.nn.cnn.denoiser", "mode_policy.nn.mot.denoiser"),
)
KIND_KEY = "kind"
DEFAULT_KIND = "mode"  # the MoDE transformer, whose configs were saved without a kind


def denoiser_config_from_dict(values: dict[str, Any]) -> Any:
    """The config of whichever registered denoiser ``values["kind"]`` names."""
    kind = values.get(KIND_KEY, DEFAULT_KIND)
    if not isinstance(kind, str):
        raise ValueError(f"denoiser kind must be a string, got {kind!r}")
    return DENOISERS.get(kind).config_class.from_dict(values)


def denoiser_class_for(config: Any) -> type:
    """The denoiser class that ``config`` (an instance of a registered config class) builds."""
    return DENOISERS.get(type(config).tag)


def load_denoiser(directory: str | Path, *, device: str | torch.device = "cpu") -> torch.nn.Module:
    """Load whichever denoiser ``save_pretrained`` wrote into ``directory``."""
    from mode_policy.nn.edm_denoiser import CONFIG_FILE

    values = read_config_json(Path(directory) / CONFIG_FILE, "the denoiser", "save_pretrained()")
    kind = values.get(KIND_KEY, DEFAULT_KIND)
    try:
        cls = DENOISERS.get(kind)
    except ValueError as error:
        raise ValueError(f"{Path(directory) / CONFIG_FILE}: {error}") from None
    return cls.from_pretrained(directory, device=device)
