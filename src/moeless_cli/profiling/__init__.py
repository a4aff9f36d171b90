"""Profiles: recording expert routing (torch, imported lazily) and the one loader (numpy only)."""

from moeless_cli.profiling.format import SCHEMA, Profile, load_profile, save_profile

__all__ = ["SCHEMA", "Profile", "load_profile", "save_profile"]
