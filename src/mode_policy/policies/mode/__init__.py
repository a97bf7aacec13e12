"""The MoDE policy type: a diffusion policy over a registered denoiser (the MoDE transformer by default)."""
