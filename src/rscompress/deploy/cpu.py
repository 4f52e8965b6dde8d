"""What this CPU offers INT8 inference: its name and the instruction-set flags that decide
whether ONNX Runtime's 8-bit kernels beat its float ones.

A latency is a fact about one machine, so every INT8 record names the CPU it was measured on.
Imports no torch (the memory probe's process may read it too).
"""

from __future__ import annotations

import platform
from dataclasses import dataclass
from pathlib import Path
from typing import Any

# The flags (as /proc/cpuinfo spells them) that change INT8 speed, in rising order of help:
# AVX2/AVX-512 multiply 8-bit pairs with VPMADDUBSW and widen in extra steps; VNNI (AVX-512
# or its AVX2-width twin) does the 8-bit dot product in one instruction; AMX-INT8 in tiles.
INT8_FLAGS = ("avx2", "avx512f", "avx512_vnni", "avx_vnni", "amx_int8")
VNNI_FLAGS = frozenset({"avx512_vnni", "avx_vnni", "amx_int8"})


@dataclass(frozen=True)
class CpuInfo:
    name: str
    flags: tuple[str, ...]  # those of INT8_FLAGS this CPU has; empty where unknown
    flags_known: bool  # False off Linux: no /proc/cpuinfo to read the flags from

    @property
    def has_vnni(self) -> bool:
        return bool(VNNI_FLAGS & set(self.flags))

    def describe(self) -> str:
        """``name (flag, flag)`` in words, saying which INT8 instructions are missing."""
        if not self.flags_known:
            return f"{self.name} (instruction-set flags unknown)"
        have = ", ".join(self.flags) or "none of " + ", ".join(INT8_FLAGS)
        missing = "" if self.has_vnni else "; no VNNI (avx512_vnni / avx_vnni) nor AMX-INT8"
        return f"{self.name} ({have}{missing})"

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "flags": list(self.flags), "flags_known": self.flags_known, "vnni": self.has_vnni}


def cpu_info(cpuinfo: Path = Path("/proc/cpuinfo")) -> CpuInfo:
    """This machine's CPU, read from ``cpuinfo`` (the first processor's entry)."""
    try:
        text = cpuinfo.read_text(errors="replace")
    except OSError:
        return CpuInfo(platform.processor() or platform.machine() or "unknown CPU", (), False)
    fields: dict[str, str] = {}
    for line in text.splitlines():
        if not line.strip():
            if fields:
                break  # the first processor's entry is enough: the others repeat it
            continue
        key, _, value = line.partition(":")
        fields.setdefault(key.strip(), value.strip())
    name = fields.get("model name") or platform.processor() or platform.machine() or "unknown CPU"
    if "flags" not in fields:
        return CpuInfo(name, (), False)
    present = set(fields["flags"].split())
    return CpuInfo(name, tuple(f for f in INT8_FLAGS if f in present), True)
