"""Hardware profiles: energy per MAC and per byte moved, memory level sizes, static power,
peak throughput and bandwidth. Shipped as YAML in ``profiles/``; every number carries its
source in the file. ``load_profile("x86-epyc")`` or ``load_profile("path/to/my.yaml")``."""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from prunepass.errors import PrunepassError

PROFILE_DIR = Path(__file__).resolve().parent / "profiles"
REQUIRED = ("name", "unit", "sources", "mac_pj", "memory", "static_power_w", "peak_macs_per_s")


class ProfileError(PrunepassError):
    """A hardware profile is missing, malformed or has impossible values."""


@dataclass(frozen=True)
class MemoryLevel:
    name: str
    size_bytes: int | None  # None: unbounded (DRAM)
    pj_per_byte: float
    bandwidth_gbs: float


@dataclass(frozen=True)
class HardwareProfile:
    name: str
    unit: str
    sources: tuple[str, ...]
    mac_pj: dict[str, float]
    memory: tuple[MemoryLevel, ...]
    static_power_w: float
    peak_macs_per_s: dict[str, float]
    description: str = ""
    provenance: str = ""
    path: str = ""
    extra: dict[str, Any] = field(default_factory=dict)

    def mac_energy(self, dtype: str) -> float:
        return self.mac_pj.get(dtype, self.mac_pj.get("float32", max(self.mac_pj.values())))

    def peak(self, dtype: str) -> float:
        return self.peak_macs_per_s.get(dtype, self.peak_macs_per_s.get(
            "float32", min(self.peak_macs_per_s.values())))

    def level_for(self, working_set_bytes: int) -> MemoryLevel:
        for level in self.memory:
            if level.size_bytes is None or working_set_bytes <= level.size_bytes:
                return level
        return self.memory[-1]

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "description": self.description, "unit": self.unit,
                "sources": list(self.sources), "mac_pj": dict(self.mac_pj),
                "memory": [vars(m) for m in self.memory], "static_power_w": self.static_power_w,
                "peak_macs_per_s": dict(self.peak_macs_per_s), "provenance": self.provenance,
                **self.extra}


def available_profiles() -> list[str]:
    return sorted(p.stem for p in PROFILE_DIR.glob("*.yaml"))


def _number(where: str, field_: str, v: Any, allow_zero: bool = True) -> float:
    if isinstance(v, str):  # YAML 1.1 reads 2.4e10 (no dot) as a string
        try:
            v = float(v)
        except ValueError:
            pass
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        raise ProfileError(f"{where}: field {field_!r} must be a number, got {v!r}")
    if v < 0 or (v == 0 and not allow_zero):
        raise ProfileError(f"{where}: field {field_!r} must be "
                           f"{'>= 0' if allow_zero else '> 0'}, got {v!r}")
    return float(v)


def parse_profile(data: Any, where: str) -> HardwareProfile:
    if not isinstance(data, dict):
        raise ProfileError(f"{where}: a profile is a YAML mapping, got {type(data).__name__}")
    for f in REQUIRED:
        if f not in data:
            raise ProfileError(f"{where}: missing field {f!r} (required: {', '.join(REQUIRED)})")
    if not data["sources"] or not isinstance(data["sources"], list):
        raise ProfileError(f"{where}: field 'sources' must list where the numbers come from")
    for key in ("mac_pj", "peak_macs_per_s"):
        if not isinstance(data[key], dict) or not data[key]:
            raise ProfileError(f"{where}: field {key!r} must map dtypes to numbers")
    mac = {k: _number(where, f"mac_pj.{k}", v) for k, v in data["mac_pj"].items()}
    peak = {k: _number(where, f"peak_macs_per_s.{k}", v, allow_zero=False)
            for k, v in data["peak_macs_per_s"].items()}
    if not isinstance(data["memory"], list) or not data["memory"]:
        raise ProfileError(f"{where}: field 'memory' must list the memory levels, smallest first")
    levels, last = [], 0
    for i, m in enumerate(data["memory"]):
        at = f"memory[{i}]"
        for f in ("name", "size_bytes", "pj_per_byte", "bandwidth_gbs"):
            if not isinstance(m, dict) or f not in m:
                raise ProfileError(f"{where}: missing field '{at}.{f}'")
        size = m["size_bytes"]
        if size is not None:
            size = int(_number(where, f"{at}.size_bytes", size, allow_zero=False))
            if size < last:
                raise ProfileError(f"{where}: memory levels must grow: '{at}.size_bytes' "
                                   f"{size} < {last}")
            last = size
        elif i != len(data["memory"]) - 1:
            raise ProfileError(f"{where}: only the last memory level may be unbounded")
        levels.append(MemoryLevel(str(m["name"]), size,
                                  _number(where, f"{at}.pj_per_byte", m["pj_per_byte"]),
                                  _number(where, f"{at}.bandwidth_gbs", m["bandwidth_gbs"],
                                          allow_zero=False)))
    known = set(REQUIRED) | {"description", "provenance"}
    return HardwareProfile(
        name=str(data["name"]), unit=str(data["unit"]), sources=tuple(map(str, data["sources"])),
        mac_pj=mac, memory=tuple(levels),
        static_power_w=_number(where, "static_power_w", data["static_power_w"]),
        peak_macs_per_s=peak, description=str(data.get("description", "")),
        provenance=str(data.get("provenance", "")), path=where,
        extra={k: v for k, v in data.items() if k not in known})


def load_profile(name_or_path: str | Path) -> HardwareProfile:
    p = Path(name_or_path)
    if not p.suffix:
        p = PROFILE_DIR / f"{name_or_path}.yaml"
    if not p.exists():
        raise ProfileError(f"no hardware profile {str(name_or_path)!r}: give a YAML path or one "
                           f"of {', '.join(available_profiles())}")
    try:
        data = yaml.safe_load(p.read_text())
    except yaml.YAMLError as e:
        raise ProfileError(f"{p}: not valid YAML ({str(e).splitlines()[0]})") from None
    return parse_profile(data, str(p))


def save_profile(profile: HardwareProfile, path: str | Path) -> None:
    Path(path).write_text(yaml.safe_dump(profile.to_dict(), sort_keys=False))
