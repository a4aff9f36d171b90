"""Cluster simulator (pure numpy): replays recorded per-request routing through the online control
plane on a hardware model, so every system can be compared at cluster scale on a laptop.

Modules: hardware (GPU and link models), presets (real model sizes), timemodel (layer time and
memory slots), routing (recorded routing and predictor forecasts per batch), simulator (the loop).
"""
