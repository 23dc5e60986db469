"""What a run computes on: the device and forward dtype it resolved to, and the machine facts that decide its numbers.

`engine.forward_dtype` defaults to float32, which gives the same pruned weights (to rounding) on every CPU kind and
GPU. `bfloat16` is a speed option; `auto` picks bf16 where the hardware multiplies it natively (CUDA, CPUs with
AVX512-BF16 or AMX) and fp32 elsewhere, so its results depend on the machine. Either way the record names what ran
(`Machine`): the resolved device and dtype, the float32 matmul precision, the CPU model and its relevant flags, the
GPU and the thread count; the fields that change results (`Machine.result_fields`) are part of every cache key.
"""

from __future__ import annotations

import functools
import platform
from pathlib import Path
from typing import Literal

import torch
from pydantic import BaseModel, ConfigDict

from pruning.errors import ConfigError

CPU_FLAGS = ("avx2", "avx512f", "avx512_bf16", "avx512_vnni", "amx_tile", "amx_bf16")  # what decides bf16 speed
ForwardDtype = Literal["float32", "bfloat16"]


@functools.lru_cache(maxsize=1)
def cpu_description() -> tuple[str, tuple[str, ...]]:
    """(model name, the flags of CPU_FLAGS it has) from /proc/cpuinfo; the platform's processor name elsewhere."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return platform.processor() or platform.machine(), ()
    first_processor = text.split("\n\n", 1)[0]
    fields = {key.strip(): value.strip() for key, _, value in
              (line.partition(":") for line in first_processor.splitlines())}
    flags = set(fields.get("flags", "").split())
    return fields.get("model name", platform.machine()), tuple(flag for flag in CPU_FLAGS if flag in flags)


def cpu_has_native_bfloat16() -> bool:
    """True when the CPU multiplies bf16 in hardware (AVX512-BF16 or AMX); elsewhere bf16 is emulated and slow
    (one SmolLM2 block over 16x512 tokens: 0.49 s in fp32, 3.06 s in bf16 on an AMD EPYC without AVX512-BF16)."""
    flags = cpu_description()[1]
    return "avx512_bf16" in flags or "amx_bf16" in flags


def resolve_device(device: str) -> torch.device:
    """'auto' means CUDA when present, else the CPU; asking for CUDA without one is an error."""
    if device == "cuda" and not torch.cuda.is_available():
        raise ConfigError("engine.device: cuda was asked for but torch sees no CUDA device; use auto or cpu")
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def resolve_forward_dtype(forward_dtype: str, device: torch.device) -> ForwardDtype:
    """'auto' is bf16 where it is fast (CUDA, bf16-capable CPUs) and fp32 elsewhere; the others are themselves."""
    if forward_dtype == "auto":
        return "bfloat16" if device.type == "cuda" or cpu_has_native_bfloat16() else "float32"
    return "bfloat16" if forward_dtype == "bfloat16" else "float32"


class Machine(BaseModel):
    """The resolved compute of a run and the facts about this machine that its numbers depend on."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    device: str  # "cpu" or "cuda:0"
    forward_dtype: ForwardDtype  # the calibration forwards' dtype, as resolved
    float32_matmul_precision: str  # torch's "highest" / "high" (TF32) / "medium"
    cpu_model: str
    cpu_flags: tuple[str, ...]
    gpu: str | None
    threads: int
    torch_version: str

    @classmethod
    def resolve(cls, device: str, forward_dtype: str) -> Machine:
        """This machine, running the engine settings `device` and `forward_dtype` ('auto' resolved here)."""
        resolved = resolve_device(device)
        model, flags = cpu_description()
        if resolved.type == "cuda":
            resolved = torch.device("cuda", torch.cuda.current_device() if resolved.index is None else resolved.index)
        return cls(device=str(resolved), forward_dtype=resolve_forward_dtype(forward_dtype, resolved),
                   float32_matmul_precision=torch.get_float32_matmul_precision(), cpu_model=model, cpu_flags=flags,
                   gpu=torch.cuda.get_device_name(resolved) if resolved.type == "cuda" else None,
                   threads=torch.get_num_threads(), torch_version=torch.__version__)

    @property
    def torch_device(self) -> torch.device:
        return torch.device(self.device)

    @property
    def torch_dtype(self) -> torch.dtype:
        return torch.bfloat16 if self.forward_dtype == "bfloat16" else torch.float32

    def result_fields(self) -> dict[str, object]:
        """What changes a pruning result: the device kind, the forward dtype, the fp32 matmul precision, and for bf16
        on a CPU whether it is native (the CPU model itself only moves fp32 results by rounding, and is not a key)."""
        fields: dict[str, object] = {"device": self.torch_device.type, "forward_dtype": self.forward_dtype,
                                     "float32_matmul_precision": self.float32_matmul_precision}
        if self.forward_dtype == "bfloat16" and self.torch_device.type == "cpu":
            fields["native_bfloat16"] = "avx512_bf16" in self.cpu_flags or "amx_bf16" in self.cpu_flags
        return fields

    def summary(self) -> str:
        """One line for cards and logs, e.g. 'cpu (AMD EPYC; avx2 avx512_bf16), float32 forwards, 2 threads'."""
        where = self.gpu or f"cpu ({self.cpu_model}; {' '.join(self.cpu_flags) or 'no avx2'})"
        return f"{where}, {self.forward_dtype} forwards, {self.threads} threads"
