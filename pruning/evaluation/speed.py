"""Speed and memory of a model in each of its compressed forms, measured honestly.

Forms of one model directory (what `pruneflow prune` wrote, or a dense model):
  dense            a model without a pruneflow record
  zeros            an unstructured / N:M model as saved: dense weights holding zeros (no kernel skips them)
  csr              its decoder linears as CSR tensors (torch.sparse; y = (W·xᵀ)ᵀ)
  semi-structured  its 2:4 decoder linears via torch.sparse.to_sparse_semi_structured (CUDA only, fp16)
  structured       a structured model: physically smaller dense matrices
  merged / factored-dense / factored-csr   an OATS model: S + UV merged, or kept factored with S dense / CSR
Cases: prefill latency (batch x tokens), greedy decode tokens/s (KV cache on; the 16-token prompt's prefill is
included in the time), the largest linears' GEMM time over one prefill's tokens, peak memory. Every time is a
torch.utils.benchmark median with its IQR after a warm-up call; the thread count is recorded. A form the
device cannot run is reported with `skipped` and the reason, never estimated.
"""

from __future__ import annotations

import platform
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, cast

import torch
from torch import nn
from torch.utils import benchmark

from pruning.models.architectures import adapter_for
from pruning.models.factored import FACTORED_DIRECTORY, csr_times, load_compressed, to_csr
from pruning.record import PruneRecord


@dataclass(frozen=True)
class SpeedSettings:
    prefill_batches: tuple[int, ...] = (1, 8)
    prefill_tokens: int = 512
    decode_batches: tuple[int, ...] = (1, 16)
    decode_prompt_tokens: int = 16
    decode_new_tokens: int = 32
    gemm_layers: int = 3
    min_run_time: float = 5.0  # seconds of timing per case at least, and at most max_run_time (if the IQR
    max_run_time: float = 20.0  # is still above 10% of the median; adaptive_autorange's rule)


class CsrLinear(nn.Module):
    """y = x·Wᵀ + b with W stored as a CSR tensor."""

    def __init__(self, linear: nn.Linear) -> None:
        super().__init__()
        self.register_buffer("weight", to_csr(linear.weight))
        self.bias = linear.bias
        self.in_features, self.out_features = linear.in_features, linear.out_features

    def forward(self, inputs: torch.Tensor) -> torch.Tensor:
        outputs = csr_times(cast(torch.Tensor, self.weight), inputs.reshape(-1, self.in_features))
        if self.bias is not None:
            outputs = outputs + self.bias
        return outputs.reshape(*inputs.shape[:-1], self.out_features)


class SemiStructuredLinear(nn.Module):
    """y = x·Wᵀ + b with a 2:4 W in torch's semi-structured sparse format (cuSPARSELt/CUTLASS kernels)."""

    def __init__(self, linear: nn.Linear) -> None:
        super().__init__()
        from torch.sparse import to_sparse_semi_structured

        self.weight = nn.Parameter(to_sparse_semi_structured(linear.weight.detach()), requires_grad=False)
        self.bias = linear.bias

    def forward(self, inputs: torch.Tensor) -> torch.Tensor:
        return nn.functional.linear(inputs, self.weight, self.bias)


def decoder_linears(model: nn.Module) -> dict[str, nn.Linear]:
    """Every pruned linear of the decoder blocks, by full name."""
    adapter = adapter_for(model)
    linears = {}
    for index, block in enumerate(adapter.blocks(model)):
        for name in adapter.linear_names:
            module = block.get_submodule(name)
            if isinstance(module, nn.Linear):
                linears[f"{adapter.blocks_path}.{index}.{name}"] = module
    return linears


def replace_linears(model: nn.Module, build: Callable[[nn.Linear], nn.Module]) -> nn.Module:
    for name, linear in decoder_linears(model).items():
        model.set_submodule(name, build(linear))
    return model


DENSE_KERNEL_FORMS = ("dense", "zeros", "structured", "merged")  # forms whose linears are plain dense matmuls


def model_forms(directory: Path) -> list[str]:
    """The forms a model directory can be benchmarked in (see the module docstring)."""
    record = PruneRecord.read_if_present(directory)
    if record is None:
        return ["dense"]
    if record.pattern == "structured":
        return ["structured"]
    if (directory / FACTORED_DIRECTORY).is_dir():
        return ["merged", "factored-dense", "factored-csr"]
    return ["zeros", "csr"] + (["semi-structured"] if record.pattern == "2:4" else [])


def unsupported_reason(form: str, device: torch.device) -> str | None:
    if form == "semi-structured" and device.type != "cuda":
        return "needs CUDA: torch.sparse.to_sparse_semi_structured runs on NVIDIA GPUs (compute capability >= 8.0)"
    if form in ("csr", "factored-csr") and device.type == "cuda":
        return "CSR is the CPU sparse form here; on CUDA the 2:4 semi-structured form is the sparse kernel"
    return None


def load_form(directory: Path, form: str, device: torch.device) -> nn.Module:
    from pruning.models.factored import SparseFormat
    from pruning.models.sources import load_model

    # fp16 on CUDA (the semi-structured kernels need it, and it is how GPUs serve), fp32 on CPU.
    dtype = torch.float16 if device.type == "cuda" else torch.float32
    if form.startswith("factored"):
        sparse_format: SparseFormat = "csr" if form == "factored-csr" else "dense"
        return load_compressed(directory, sparse_format).to(device=device, dtype=dtype).eval()
    model = load_model(directory, dtype).to(device).eval()
    if form == "csr":
        replace_linears(model, CsrLinear)
    elif form == "semi-structured":
        replace_linears(model, SemiStructuredLinear)
    return model


def _time(statement: str, variables: dict[str, Any], settings: SpeedSettings) -> dict[str, Any]:
    timer = benchmark.Timer(stmt=statement, globals=variables, num_threads=torch.get_num_threads())
    timer.timeit(1)  # warm-up: first-call allocations, kernel selection
    measurement = timer.adaptive_autorange(min_run_time=settings.min_run_time, max_run_time=settings.max_run_time)
    return {"median_s": measurement.median, "iqr_s": measurement.iqr, "runs": len(measurement.times)}


@contextmanager
def peak_memory(device: torch.device) -> Iterator[dict[str, float]]:
    """Peak memory during the block: CUDA allocator peak, or this process's peak RSS sampled every 2 ms."""
    result: dict[str, float] = {}
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        yield result
        torch.cuda.synchronize(device)
        result["peak_allocated_mb"] = torch.cuda.max_memory_allocated(device) / 2**20
        return
    page = 4096
    peak = [0]
    stop = threading.Event()

    def sample() -> None:
        while not stop.is_set():
            with open("/proc/self/statm") as handle:
                peak[0] = max(peak[0], int(handle.read().split()[1]) * page)
            time.sleep(0.002)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    try:
        yield result
    finally:
        stop.set()
        sampler.join()
        result["peak_rss_mb"] = peak[0] / 2**20


def features(module: nn.Module) -> tuple[int, int]:
    """(out_features, in_features) of any of the linear forms."""
    return int(getattr(module, "out_features")), int(getattr(module, "in_features"))  # noqa: B009


def largest_linears(model: nn.Module, count: int) -> dict[str, nn.Module]:
    """Block 0's `count` largest linears (by d_out x d_in) in the loaded form."""
    adapter = adapter_for(model)
    block = adapter.blocks(model)[0]
    modules = {name: block.get_submodule(name) for name in adapter.linear_names}
    size = {name: features(module)[0] * features(module)[1] for name, module in modules.items()}
    return {name: modules[name] for name in sorted(size, key=size.__getitem__, reverse=True)[:count]}


def measure_model(model: nn.Module, settings: SpeedSettings, device: torch.device) -> dict[str, Any]:
    vocabulary = int(model.get_input_embeddings().num_embeddings)  # type: ignore[operator]
    generator = torch.Generator().manual_seed(0)
    results: dict[str, Any] = {"prefill": {}, "decode": {}, "gemm": {}}
    with torch.inference_mode():
        for batch in settings.prefill_batches:
            ids = torch.randint(0, vocabulary, (batch, settings.prefill_tokens), generator=generator).to(device)
            with peak_memory(device) as memory:
                timing = _time("model(input_ids=ids, use_cache=False); sync()",
                               {"model": model, "ids": ids, "sync": _synchronizer(device)}, settings)
            results["prefill"][f"{batch}x{settings.prefill_tokens}"] = {**timing, **memory}
        for batch in settings.decode_batches:
            prompt = torch.randint(0, vocabulary, (batch, settings.decode_prompt_tokens), generator=generator)
            statement = (f"model.generate(prompt, attention_mask=mask, max_new_tokens={settings.decode_new_tokens}, "
                         f"min_new_tokens={settings.decode_new_tokens}, do_sample=False, pad_token_id=0); sync()")
            timing = _time(statement, {"model": model, "prompt": prompt.to(device),
                                       "mask": torch.ones_like(prompt).to(device), "sync": _synchronizer(device)},
                           settings)
            results["decode"][f"batch{batch}"] = {
                **timing, "tokens_per_second": batch * settings.decode_new_tokens / timing["median_s"]}
        dtype = next(model.parameters()).dtype
        for name, module in largest_linears(model, settings.gemm_layers).items():
            shape = list(features(module))
            inputs = torch.randn(settings.prefill_tokens, shape[1], generator=generator).to(device, dtype)
            timing = _time("module(inputs); sync()", {"module": module, "inputs": inputs,
                                                       "sync": _synchronizer(device)}, settings)
            results["gemm"][name] = {**timing, "shape": shape,
                                     "tokens": settings.prefill_tokens}
    return results


def _synchronizer(device: torch.device) -> Callable[[], None]:
    return (lambda: torch.cuda.synchronize(device)) if device.type == "cuda" else (lambda: None)


def benchmark_directory(directory: Path, settings: SpeedSettings, device: torch.device,
                        forms: list[str] | None = None) -> dict[str, Any]:
    """Every form of one model directory: {form: measurements or {"skipped": reason}}, plus what it is."""
    record = PruneRecord.read_if_present(directory)
    results: dict[str, Any] = {}
    for form in forms or model_forms(directory):
        reason = unsupported_reason(form, device)
        if reason is not None:
            results[form] = {"skipped": reason}
            continue
        model = load_form(directory, form, device)
        results[form] = {**measure_model(model, settings, device),
                         "checkpoint_bytes": checkpoint_bytes(directory, form)}
        if form in DENSE_KERNEL_FORMS:
            results[form]["linear_flops_per_token"] = linear_flops_per_token(model)
        del model
    if record is None:
        return {"directory": str(directory), "method": "dense", "pattern": "-", "target_sparsity": 0.0,
                "sparsity": 0.0, "forms": results}
    return {"directory": str(directory), "method": record.method, "pattern": record.pattern,
            "target_sparsity": record.target_sparsity, "sparsity": record.decoder_linear_sparsity, "forms": results}


def linear_flops_per_token(model: nn.Module) -> int:
    """2·Σ d_in·d_out over the model's dense nn.Linear modules (lm_head included): the matmul work per token."""
    return sum(2 * module.in_features * module.out_features for module in model.modules()
               if isinstance(module, nn.Linear))


def checkpoint_bytes(directory: Path, form: str) -> int:
    folder = directory / FACTORED_DIRECTORY if form.startswith("factored") else directory
    return sum(path.stat().st_size for path in folder.glob("*.safetensors"))


def environment(device: torch.device) -> dict[str, Any]:
    described = (torch.cuda.get_device_name(device) if device.type == "cuda"
                 else f"cpu ({platform.processor() or platform.machine()})")
    return {"device": described, "threads": torch.get_num_threads(), "torch": torch.__version__}


def speedups(results: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per model and form: dense time / form time for every prefill and decode case (dense = the first entry
    whose method is 'dense')."""
    dense = next((entry["forms"]["dense"] for entry in results if entry["method"] == "dense"), None)
    rows = []
    for entry in results:
        for form, measured in entry["forms"].items():
            row = {"method": entry["method"], "pattern": entry["pattern"], "target_sparsity": entry["target_sparsity"],
                   "form": form}
            if "skipped" in measured or dense is None:
                rows.append({**row, "skipped": measured.get("skipped", "no dense entry")})
                continue
            for kind in ("prefill", "decode"):
                for case, timing in measured[kind].items():
                    row[f"{kind}_{case}_speedup"] = dense[kind][case]["median_s"] / timing["median_s"]
            rows.append(row)
    return rows



def benchmark_models(directories: list[Path], settings: SpeedSettings, devices: tuple[str, ...]) -> dict[str, Any]:
    """Every directory's forms on every device; a device torch cannot see is recorded as skipped with why.

    The dense model should come first: speed-ups are taken against the entry whose method is 'dense'.
    """
    results: dict[str, Any] = {"settings": asdict(settings), "devices": {}}
    for name in devices:
        if name == "cuda" and not torch.cuda.is_available():
            results["devices"][name] = {"skipped": "torch sees no CUDA device on this machine"}
            continue
        device = torch.device(name)
        models = [benchmark_directory(directory, settings, device) for directory in directories]
        results["devices"][name] = {**environment(device), "models": models, "speedups": speedups(models)}
    return results
