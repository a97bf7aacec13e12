"""The VDD policy type: a one-step Gaussian mixture of experts, distilled by ``mode_policy.distill``."""
