"""Hardware profiles (YAML, with sources) and their loader."""
from prunepass.hardware.profile import (HardwareProfile, MemoryLevel, ProfileError,
                                        available_profiles, load_profile, save_profile)

__all__ = ["HardwareProfile", "MemoryLevel", "ProfileError", "available_profiles",
           "load_profile", "save_profile"]
