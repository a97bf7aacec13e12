"""Simulation environments (Meta-World v3) and their scripted experts."""
