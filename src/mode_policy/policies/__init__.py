"""Policies: config + normalizer + encoders + denoiser + sampler."""
