"""Diffusion Policy's CNN baseline (Chi et al. 2023): a 1-D temporal U-Net denoiser with MoDE's interface."""

from mode_policy.nn.cnn.config import CNNDenoiserConfig
from mode_policy.nn.cnn.denoiser import CNNDenoiser
from mode_policy.nn.cnn.unet import ConditionalUnet1D

__all__ = ["CNNDenoiser", "CNNDenoiserConfig", "ConditionalUnet1D"]
