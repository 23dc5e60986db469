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

import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Literal, cast

import torch
from pydantic import BaseModel, ConfigDict, Field, PositiveInt, model_validator
from torch import nn
from torch.utils.benchmark import Timer

from pruning.errors import ConfigError
from pruning.io import write_json
from pruning.machine import cpu_description
from pruning.models.architectures import adapter_for
from pruning.models.factored import FACTORED_DIRECTORY, csr_times, load_compressed, to_csr
from pruning.record import RUN_RECORD_FILE, PruneRecord


class SpeedSettings(BaseModel):
    """What to measure, where, and for how long: `min_run_time` seconds of timing per case at least, and at most
    `max_run_time` while the IQR is still above 10% of the median (adaptive_autorange's rule)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    devices: tuple[Literal["cpu", "cuda"], ...] = ("cpu", "cuda")
    prefill_batches: tuple[PositiveInt, ...] = (1, 8)
    prefill_tokens: PositiveInt = 512
    decode_batches: tuple[PositiveInt, ...] = (1, 16)
    decode_prompt_tokens: PositiveInt = 16
    decode_new_tokens: PositiveInt = 32
    gemm_layers: PositiveInt = 3
    min_run_time: float = Field(default=5.0, gt=0)
    max_run_time: float = Field(default=20.0, gt=0)

    @model_validator(mode="after")
    def _longest_at_least_shortest(self) -> SpeedSettings:
        if self.max_run_time < self.min_run_time:
            raise ConfigError(f"max_run_time: {self.max_run_time} is below min_run_time {self.min_run_time}; "
                              "raise it or lower min_run_time")
        return self


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
    timer = Timer(stmt=statement, globals=variables, num_threads=torch.get_num_threads())
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
    """The device measured: the GPU's name, or the CPU's model and the flags that decide its dtypes' speed."""
    if device.type == "cuda":
        return {"device": torch.cuda.get_device_name(device), "threads": torch.get_num_threads(),
                "torch": torch.__version__}
    model, flags = cpu_description()
    return {"device": f"cpu ({model})", "cpu_flags": list(flags), "threads": torch.get_num_threads(),
            "torch": torch.__version__}


class Speedup(BaseModel):
    """Dense time over a form's time for every prefill and decode case of one model's form (`ratios`, e.g.
    {"prefill_1x512": 1.52, "decode_batch1": 1.08}), or why the form was not measured (`skipped`)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    model: str = ""  # the report's model name, set when rows from several files are joined
    device: str = ""
    method: str
    pattern: str
    target_sparsity: float
    form: str
    skipped: str | None = None
    ratios: dict[str, float] = {}


def speedups(results: list[dict[str, Any]]) -> list[Speedup]:
    """Per model and form: dense time / form time for every prefill and decode case (dense = the first entry
    whose method is 'dense')."""
    dense = next((entry["forms"]["dense"] for entry in results if entry["method"] == "dense"), None)
    rows = []
    for entry in results:
        for form, measured in entry["forms"].items():
            row = Speedup(method=entry["method"], pattern=entry["pattern"], target_sparsity=entry["target_sparsity"],
                          form=form)
            if "skipped" in measured or dense is None:
                rows.append(row.model_copy(update={"skipped": measured.get("skipped", "no dense entry")}))
                continue
            ratios = {f"{kind}_{case}": dense[kind][case]["median_s"] / timing["median_s"]
                      for kind in ("prefill", "decode") for case, timing in measured[kind].items()}
            rows.append(row.model_copy(update={"ratios": ratios}))
    return rows


def benchmark_models(directories: list[Path], settings: SpeedSettings) -> dict[str, Any]:
    """Every directory's forms on every device; a device torch cannot see is recorded as skipped with why.

    The dense model should come first: speed-ups are taken against the entry whose method is 'dense'.
    """
    results: dict[str, Any] = {"settings": settings.model_dump(mode="json"), "devices": {}}
    for name in settings.devices:
        if name == "cuda" and not torch.cuda.is_available():
            results["devices"][name] = {"skipped": "torch sees no CUDA device on this machine"}
            continue
        device = torch.device(name)
        models = [benchmark_directory(directory, settings, device) for directory in directories]
        results["devices"][name] = {**environment(device), "models": models,
                                    "speedups": [row.model_dump(mode="json") for row in speedups(models)]}
    return results


def model_directories(folder: Path) -> list[Path]:
    """`folder` itself when it is a model, else the pruned model directories one level under it."""
    if (folder / "config.json").is_file():
        return [folder]
    return sorted(path.parent for path in folder.glob(f"*/{RUN_RECORD_FILE}"))


def benchmark(models: list[Path], settings: SpeedSettings, output: Path) -> Path:
    """The one benchmark every driver runs (`pruneflow bench`, the sweep's bench task, the DVC bench stages): each
    model directory in turn (a folder of pruned models is expanded; put the dense model first, the speed-ups are
    taken against it), written to `output` as JSON."""
    directories = []
    for path in models:
        found = model_directories(path)
        if not found:
            raise ConfigError(f"--pruned: '{path}' is neither a pruned model directory nor a folder of them")
        directories += found
    write_json(output, benchmark_models(directories, settings))
    return output
