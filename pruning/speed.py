"""Speed and memory of a model in each of its compressed forms, measured honestly.

Forms of one model directory (what `pruneflow prune` wrote, or a dense model):
  dense            a model without a pruneflow record
  zeros            an unstructured / N:M model as saved: dense weights holding zeros (no kernel skips them)
  csr              its decoder linears as CSR tensors (torch.sparse; y = (W·xᵀ)ᵀ)
  semi-structured  its 2:4 decoder linears via torch.sparse.to_sparse_semi_structured (CUDA only, fp16)
  structured       a structured model: physically smaller dense matrices
  merged / factored-dense / factored-csr   an OATS model: S + UV merged, or kept factored with S dense / CSR
Cases: prefill latency (batch x tokens), greedy decode tokens/s (KV cache on; the 16-token prompt's prefill is
included in the time), the largest linears' GEMM time over one prefill's tokens, peak memory.

Speed-ups are measured, not divided across runs: the dense model stays loaded beside each form, and every prefill
and decode case times the two in alternation, `rounds` times each, after a warm-up call of both, so that both see
the same machine state (a busy core, a clock change). The speed-up is the median of the rounds' dense/form ratios,
with their quartiles as its spread; the dense model paired with itself gives the noise floor. On a CPU the forms
run in the dtype it multiplies fastest (bf16 with AVX512-BF16 or AMX, else fp32; `cpu_dtypes` adds others), CSR
forms in fp32 (torch's CSR kernels); on CUDA in fp16. The CPU model and flags are recorded. A form the device cannot
run is reported with `skipped` and the reason, never estimated.
"""

from __future__ import annotations

import multiprocessing
import queue
import statistics
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
from pruning.io import die_with_parent, write_json
from pruning.machine import cpu_description, resolve_forward_dtype
from pruning.models.architectures import adapter_for
from pruning.models.factored import FACTORED_DIRECTORY, csr_times, load_compressed, to_csr
from pruning.record import RUN_RECORD_FILE, PruneRecord

MIN_ROUNDS = 3  # paired rounds per case at least: quartiles need three


Form = Literal["dense", "zeros", "csr", "semi-structured", "structured", "merged", "factored-dense", "factored-csr"]


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
    rounds: int = Field(default=7, ge=MIN_ROUNDS, description="alternations of form and dense reference per case "
                                                              "(fewer once max_run_time has passed)")
    cpu_dtypes: tuple[Literal["fastest", "float32", "bfloat16"], ...] = Field(
        default=("fastest",), min_length=1, description="fastest: bf16 where the CPU has it natively, else fp32")
    forms: tuple[Form, ...] | None = Field(None, min_length=1, description="measure only these forms of each "
                                           "model (a model without one of them is measured in none); all when unset")

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


CSR_FORMS = ("csr", "factored-csr")


def cpu_dtype(name: str) -> torch.dtype:
    """A `cpu_dtypes` entry as a torch dtype ('fastest' is the engine's 'auto' on a CPU: bf16 where the CPU
    multiplies it natively, else fp32)."""
    resolved = resolve_forward_dtype("auto" if name == "fastest" else name, torch.device("cpu"))
    return torch.bfloat16 if resolved == "bfloat16" else torch.float32


def dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")


def form_dtype(form: str, device: torch.device, dtype: torch.dtype) -> torch.dtype:
    """fp16 on CUDA (the semi-structured kernels need it, and it is how GPUs serve); on a CPU the pass's dtype, but
    fp32 for the CSR forms (torch's CPU CSR matmuls)."""
    if device.type == "cuda":
        return torch.float16
    return torch.float32 if form in CSR_FORMS else dtype


def load_form(directory: Path, form: str, device: torch.device, dtype: torch.dtype = torch.float32) -> nn.Module:
    from pruning.models.factored import SparseFormat
    from pruning.models.sources import load_model

    dtype = form_dtype(form, device, dtype)
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


def _quartiles(values: list[float]) -> tuple[float, float, float]:
    low, middle, high = statistics.quantiles(values, n=4, method="inclusive")
    return low, middle, high


def _seconds_per_call(call: Callable[[], object], number: int) -> float:
    started = time.perf_counter()
    for _ in range(number):
        call()
    return (time.perf_counter() - started) / number


def _paired(form: Callable[[], object], dense: Callable[[], object], settings: SpeedSettings) -> dict[str, Any]:
    """The form and the dense reference timed in alternation, `rounds` times each (about min_run_time seconds in
    all; fewer rounds, MIN_ROUNDS at least, where they pass max_run_time); speed-up = median over rounds of dense
    time / form time, its spread the rounds' quartiles. Each round times `number` calls of one, then of the other,
    and nothing else (torch's Timer.timeit adds two warm-up calls to every round: 3x the time for the same data)."""
    # Warm-up (first-call allocations, kernel selection); its time, an overestimate, sizes the calls per timing.
    one_call = max(_seconds_per_call(form, 1) + _seconds_per_call(dense, 1), 1e-6)
    number = max(1, round(settings.min_run_time / settings.rounds / one_call))
    form_times: list[float] = []
    dense_times: list[float] = []
    started = time.perf_counter()
    while len(form_times) < settings.rounds and (len(form_times) < MIN_ROUNDS
                                                 or time.perf_counter() - started < settings.max_run_time):
        form_times.append(_seconds_per_call(form, number))
        dense_times.append(_seconds_per_call(dense, number))
    ratios = [reference / measured for reference, measured in zip(dense_times, form_times, strict=True)]
    form_low, form_median, form_high = _quartiles(form_times)
    ratio_low, ratio_median, ratio_high = _quartiles(ratios)
    return {"median_s": form_median, "iqr_s": form_high - form_low, "rounds": len(form_times),
            "runs": len(form_times) * number,
            "dense_median_s": statistics.median(dense_times), "speedup": ratio_median,
            "speedup_quartiles": [ratio_low, ratio_high]}


@contextmanager
def peak_memory(device: torch.device) -> Iterator[dict[str, float]]:
    """Peak memory during the block: the CUDA allocator's peaks (allocated and reserved), or this process's peak
    RSS sampled every 2 ms."""
    result: dict[str, float] = {}
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        yield result
        torch.cuda.synchronize(device)
        result["peak_allocated_mb"] = torch.cuda.max_memory_allocated(device) / 2**20
        result["peak_reserved_mb"] = torch.cuda.max_memory_reserved(device) / 2**20  # the caching allocator's hold
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


def measure_model(model: nn.Module, reference: nn.Module, settings: SpeedSettings,
                  device: torch.device) -> dict[str, Any]:
    """Every case of `model`, its prefill and decode cases paired with the dense `reference` (see `_paired`)."""
    vocabulary = int(model.get_input_embeddings().num_embeddings)  # type: ignore[operator]
    generator = torch.Generator().manual_seed(0)
    results: dict[str, Any] = {"prefill": {}, "decode": {}, "gemm": {}}
    sync = _synchronizer(device)
    with torch.inference_mode():
        for batch in settings.prefill_batches:
            ids = torch.randint(0, vocabulary, (batch, settings.prefill_tokens), generator=generator).to(device)
            with peak_memory(device) as memory:
                model(input_ids=ids, use_cache=False)
                sync()

            def prefill(timed: nn.Module, ids: torch.Tensor = ids) -> None:
                timed(input_ids=ids, use_cache=False)
                sync()
            timing = _paired(lambda: prefill(model), lambda: prefill(reference), settings)
            results["prefill"][f"{batch}x{settings.prefill_tokens}"] = {**timing, **memory}
        for batch in settings.decode_batches:
            prompt = torch.randint(0, vocabulary, (batch, settings.decode_prompt_tokens), generator=generator)
            prompt = prompt.to(device)
            mask = torch.ones_like(prompt)

            def decode(timed: nn.Module, prompt: torch.Tensor = prompt, mask: torch.Tensor = mask) -> None:
                cast(Any, timed).generate(prompt, attention_mask=mask,
                                          max_new_tokens=settings.decode_new_tokens,
                                          min_new_tokens=settings.decode_new_tokens, do_sample=False, pad_token_id=0)
                sync()
            timing = _paired(lambda: decode(model), lambda: decode(reference), settings)
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


class DenseReference:
    """The dense model, loaded once per dtype and kept beside each form it is paired with."""

    def __init__(self, directory: Path, device: torch.device) -> None:
        self.directory, self.device = directory, device
        self._loaded: dict[torch.dtype, nn.Module] = {}

    def model(self, dtype: torch.dtype) -> nn.Module:
        if dtype not in self._loaded:
            self._loaded.clear()  # one at a time: a pass runs forms of one dtype, CSR ones in fp32 apart
            self._loaded[dtype] = load_form(self.directory, "dense", self.device, dtype)
        return self._loaded[dtype]


def benchmark_directory(directory: Path, reference: DenseReference, settings: SpeedSettings, device: torch.device,
                        dtype: torch.dtype) -> dict[str, Any]:
    """Every form of one model directory: {form: measurements or {"skipped": reason}}, plus what it is."""
    record = PruneRecord.read_if_present(directory)
    results: dict[str, Any] = {}
    for form in model_forms(directory):
        if settings.forms is not None and form not in settings.forms:
            continue
        reason = unsupported_reason(form, device)
        if reason is not None:
            results[form] = {"skipped": reason}
            continue
        model = load_form(directory, form, device, dtype)
        measured_dtype = form_dtype(form, device, dtype)
        results[form] = {**measure_model(model, reference.model(measured_dtype), settings, device),
                         "dtype": dtype_name(measured_dtype),
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
    {"prefill_1x512": 1.52, "decode_batch1": 1.08}, each the median over rounds paired with the dense model in the
    same process; `spread`: the rounds' quartiles), or why the form was not measured (`skipped`)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    model: str = ""  # the report's model name, set when rows from several files are joined
    device: str = ""
    method: str
    pattern: str
    target_sparsity: float
    form: str
    skipped: str | None = None
    ratios: dict[str, float] = {}
    spread: dict[str, tuple[float, float]] = {}


def speedups(results: list[dict[str, Any]]) -> list[Speedup]:
    """Per model and form: the paired speed-up of every prefill and decode case, with its spread."""
    rows = []
    for entry in results:
        for form, measured in entry["forms"].items():
            row = Speedup(method=entry["method"], pattern=entry["pattern"], target_sparsity=entry["target_sparsity"],
                          form=form)
            if "skipped" in measured:
                rows.append(row.model_copy(update={"skipped": measured["skipped"]}))
                continue
            cases = {f"{kind}_{case}": timing for kind in ("prefill", "decode")
                     for case, timing in measured[kind].items()}
            rows.append(row.model_copy(update={
                "ratios": {name: timing["speedup"] for name, timing in cases.items()},
                "spread": {name: tuple(timing["speedup_quartiles"]) for name, timing in cases.items()}}))
    return rows


def device_passes(settings: SpeedSettings) -> list[tuple[str, torch.device, torch.dtype]]:
    """(entry name, device, dtype) of every pass: 'cpu' in its first dtype ('cpu/float32' for another), 'cuda'."""
    passes = []
    for name in settings.devices:
        if name == "cuda":
            passes.append(("cuda", torch.device("cuda"), torch.float16))
            continue
        dtypes = list(dict.fromkeys(cpu_dtype(item) for item in settings.cpu_dtypes))
        passes += [("cpu" if index == 0 else f"cpu/{dtype_name(dtype)}", torch.device("cpu"), dtype)
                   for index, dtype in enumerate(dtypes)]
    return passes


def benchmark_models(directories: list[Path], settings: SpeedSettings, dense: Path,
                     on_model: Callable[[int, int], None] | None = None) -> dict[str, Any]:
    """Every directory's forms on every device, each paired with the `dense` model's; a device torch cannot see is
    recorded as skipped with why. `on_model(done, total)` is called after each model on each device."""
    results: dict[str, Any] = {"settings": settings.model_dump(mode="json"), "dense": str(dense), "devices": {}}
    passes = device_passes(settings)
    visible = [device.type != "cuda" or torch.cuda.is_available() for _, device, _ in passes]
    total, done = sum(visible) * len(directories), 0
    for (name, device, dtype), seen in zip(passes, visible, strict=True):
        if not seen:
            results["devices"][name] = {"skipped": "torch sees no CUDA device on this machine"}
            continue
        reference = DenseReference(dense, device)
        models = []
        for directory in directories:
            models.append(benchmark_directory(directory, reference, settings, device, dtype))
            done += 1
            if on_model is not None:
                on_model(done, total)
        results["devices"][name] = {**environment(device), "dtype": dtype_name(dtype),
                                    "models": models,
                                    "speedups": [row.model_dump(mode="json") for row in speedups(models)]}
    return results


def model_directories(folder: Path) -> list[Path]:
    """`folder` itself when it is a model, else the pruned model directories one level under it."""
    if (folder / "config.json").is_file():
        return [folder]
    return sorted(path.parent for path in folder.glob(f"*/{RUN_RECORD_FILE}"))


def benchmark(models: list[Path], settings: SpeedSettings, output: Path, dense: Path,
              on_model: Callable[[int, int], None] | None = None) -> Path:
    """The one benchmark every driver runs (`pruneflow bench`, the sweep's bench task, the DVC bench stages): each
    model directory in turn (a folder of pruned models is expanded), every case paired with the `dense` model,
    written to `output` as JSON. List `dense` among `models` to measure it too (paired with itself: the noise
    floor). `on_model(done, total)` follows the progress, model by model."""
    directories = []
    for path in models:
        found = model_directories(path)
        if not found:
            raise ConfigError(f"--pruned: '{path}' is neither a pruned model directory nor a folder of them")
        directories += found
    write_json(output, benchmark_models(directories, settings, dense, on_model))
    return output


def benchmark_in_fresh_process(models: list[Path], settings: SpeedSettings, output: Path, dense: Path,
                               on_model: Callable[[int, int], None] | None = None) -> Path:
    """`benchmark` in a process of its own (spawned), its progress followed here: what a long run did before (a
    sweep's heap after eight prunes, its server and logging threads) does not reach the timings, which then match
    `pruneflow bench --params` on the same models. A stop (Ctrl-C) here terminates the child."""
    context = multiprocessing.get_context("spawn")
    progress = context.Queue()
    child = context.Process(target=_benchmark_child, args=(models, settings.model_dump(mode="json"), output, dense,
                                                           progress), daemon=True)
    child.start()
    try:
        while True:
            try:
                kind, *payload = progress.get(timeout=1.0)
            except queue.Empty:
                if not child.is_alive():
                    raise RuntimeError(f"the benchmark process ended without a result (exit code "
                                       f"{child.exitcode})") from None
                continue
            if kind == "model" and on_model is not None:
                on_model(*payload)
            elif kind == "error":
                configuration, message = payload
                if configuration:
                    raise ConfigError(message)
                raise RuntimeError(f"the benchmark process failed: {message}")
            elif kind == "done":
                return Path(payload[0])
    finally:
        if child.is_alive():
            child.terminate()
        child.join()


def _benchmark_child(models: list[Path], settings: dict[str, Any], output: Path, dense: Path,
                     progress: Any) -> None:
    die_with_parent()
    try:
        written = benchmark(models, SpeedSettings.model_validate(settings), output, dense,
                            lambda done, total: progress.put(("model", done, total)))
    except Exception as error:  # reported to the parent, which raises it
        progress.put(("error", isinstance(error, ConfigError), str(error) if isinstance(error, ConfigError)
                      else f"{type(error).__name__}: {error}"))
        return
    progress.put(("done", str(written)))
