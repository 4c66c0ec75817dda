"""Energy meters: Linux powercap RAPL (CPU package / DRAM) and NVIDIA NVML.

RAPL is read from the kernel's documented sysfs interface (energy_uj counters, corrected
for wrap-around with max_energy_range_uj); NVML through nvidia-ml-py, NVIDIA's own binding
(the GPU's total-energy counter where the GPU has one, else integrated power samples).
A measuring framework such as Zeus reads the same counters but brings a large dependency
tree; these two small readers are all prunepass needs. Where no meter can be read, the
reason is kept and every energy number is labelled "modelled"."""
from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from prunepass.errors import PrunepassError


class MeterUnavailable(PrunepassError):
    """No energy meter can be read here; the message says why."""


@dataclass
class EnergyReading:
    joules: float | None  # per call of the measured function; None when not measured
    seconds: float  # wall time per call
    source: str  # "measured: ..." or "unavailable: <reason>"
    notes: list[str] = field(default_factory=list)  # e.g. counter wrap-arounds corrected

    @property
    def measured(self) -> bool:
        return self.joules is not None


class RaplMeter:
    """Package and DRAM energy from /sys/class/powercap/intel-rapl:* (AMD exposes the same)."""

    def __init__(self, root: str | Path = "/sys/class/powercap") -> None:
        self.root = Path(root)
        zones = sorted(p for p in self.root.glob("intel-rapl:*") if (p / "energy_uj").exists()) \
            if self.root.exists() else []
        if not zones:
            raise MeterUnavailable(f"no RAPL zones under {self.root} (no powercap driver, a "
                                   "virtual machine, or a non-Linux system)")
        self.zones = zones
        self.names = [self._read_text(z / "name", z.name) for z in zones]
        self.ranges = [int(self._read_text(z / "max_energy_range_uj", str(2**32))) for z in zones]
        self.read()  # fail now, not in the middle of a measurement

    @staticmethod
    def _read_text(path: Path, default: str | None = None) -> str:
        try:
            return path.read_text().strip()
        except FileNotFoundError:
            if default is not None:
                return default
            raise MeterUnavailable(f"{path} does not exist") from None
        except PermissionError:
            raise MeterUnavailable(f"permission denied reading {path}: energy counters are "
                                   "root-only on recent kernels (run as root or chmod them)") \
                from None
        except OSError as e:
            raise MeterUnavailable(f"cannot read {path}: {e}") from None

    def read(self) -> list[int]:
        out = []
        for z in self.zones:
            text = self._read_text(z / "energy_uj")
            try:
                out.append(int(text))
            except ValueError:
                raise MeterUnavailable(f"{z / 'energy_uj'} holds {text!r}, not a counter") \
                    from None
        return out

    def joules_between(self, start: list[int], end: list[int]) -> tuple[float, list[str]]:
        total, notes = 0, []
        for name, a, b, rng in zip(self.names, start, end, self.ranges):
            if b < a:  # the counter wrapped once during the run
                notes.append(f"RAPL counter {name} wrapped during the run; corrected with "
                             f"max_energy_range_uj={rng}")
                b += rng
            total += b - a
        return total / 1e6, notes

    @property
    def description(self) -> str:
        return "RAPL " + "+".join(self.names)


class NvmlMeter:
    """GPU energy from NVML: the total-energy counter (Volta and newer), else power samples
    integrated over time."""

    def __init__(self, index: int = 0, sample_s: float = 0.01) -> None:
        try:
            import pynvml
        except ImportError:
            raise MeterUnavailable("nvidia-ml-py is not installed: pip install "
                                   "'prunepass[energy]'") from None
        try:
            pynvml.nvmlInit()
            self.handle = pynvml.nvmlDeviceGetHandleByIndex(index)
        except pynvml.NVMLError as e:
            raise MeterUnavailable(f"NVML cannot open GPU {index}: {e}") from None
        self.nvml, self.index, self.sample_s = pynvml, index, sample_s
        try:
            pynvml.nvmlDeviceGetTotalEnergyConsumption(self.handle)
            self.counter = True
        except pynvml.NVMLError:
            self.counter = False
        name = pynvml.nvmlDeviceGetName(self.handle)
        self.description = (f"NVML GPU {index} ({name if isinstance(name, str) else name.decode()}"
                            f", {'energy counter' if self.counter else 'integrated power'})")

    def measure(self, fn: Callable[[], None], calls: int) -> float:
        if self.counter:
            a = self.nvml.nvmlDeviceGetTotalEnergyConsumption(self.handle)  # mJ
            for _ in range(calls):
                fn()
            b = self.nvml.nvmlDeviceGetTotalEnergyConsumption(self.handle)
            return (b - a) / 1e3
        samples: list[tuple[float, float]] = []
        stop = threading.Event()

        def poll() -> None:
            while not stop.is_set():
                samples.append((time.perf_counter(),
                                self.nvml.nvmlDeviceGetPowerUsage(self.handle) / 1e3))
                time.sleep(self.sample_s)
        t = threading.Thread(target=poll, daemon=True)
        t.start()
        for _ in range(calls):
            fn()
        stop.set()
        t.join()
        return sum((t1 - t0) * p0 for (t0, p0), (t1, _) in zip(samples, samples[1:]))


def open_meter(device: str = "cpu"):  # noqa: ANN201
    """``cpu`` -> RaplMeter, ``gpu`` or ``gpu:N`` -> NvmlMeter; raises MeterUnavailable."""
    if device == "cpu":
        return RaplMeter()
    if device.startswith("gpu"):
        return NvmlMeter(int(device.split(":")[1]) if ":" in device else 0)
    raise MeterUnavailable(f"unknown meter device {device!r}: use cpu, gpu or gpu:N")


def measure_energy(fn: Callable[[], None], device: str = "cpu", calls: int = 20,
                   meter=None, sync: Callable[[], None] | None = None) -> EnergyReading:  # noqa: ANN001
    """Energy per call of ``fn`` (after one warm-up call). Never returns a silent zero: when
    no meter can be read the reading says why and carries only the measured time."""
    fn()
    if sync:
        sync()
    try:
        meter = meter or open_meter(device)
    except MeterUnavailable as e:
        t0 = time.perf_counter()
        for _ in range(calls):
            fn()
        if sync:
            sync()
        return EnergyReading(None, (time.perf_counter() - t0) / calls, f"unavailable: {e}")
    t0 = time.perf_counter()
    if isinstance(meter, RaplMeter):
        start = meter.read()
        for _ in range(calls):
            fn()
        if sync:
            sync()
        joules, notes = meter.joules_between(start, meter.read())
    else:
        def call() -> None:
            fn()
            if sync:
                sync()
        joules, notes = meter.measure(call, calls), []
    seconds = (time.perf_counter() - t0) / calls
    if joules <= 0:
        return EnergyReading(None, seconds, f"unavailable: {meter.description} did not advance "
                             "during the run (counter too coarse for so short a run?)", notes)
    return EnergyReading(joules / calls, seconds, f"measured: {meter.description}", notes)
