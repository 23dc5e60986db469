"""The `pruneflow` command line: bad input fails early and cleanly; a tiny job runs end to end."""

import json
import os
import stat

import pytest
import torch
import yaml
from transformers import AutoModelForCausalLM

from flows.cli import main


def run_cli(arguments, capsys):
    status = main(arguments)
    captured = capsys.readouterr()
    return status, captured.out, captured.err


def base_arguments(model, corpus, output):
    return ["prune", "--model", str(model), "--calibration", str(corpus), "--eval", str(corpus),
            "--num-samples", "4", "--seqlen", "32", "--eval-seqlen", "32", "--eval-windows", "2",
            "--output", str(output), "--cache-dir", str(output.parent / "cache"),
            "--artifacts", str(output.parent / "artifacts")]


@pytest.mark.parametrize("extra, message", [
    (["--method", "wanda", "--sparsity", "1.2"], "method.sparsity: sparsity must be in [0, 1)"),
    (["--method", "wanda", "--sparsity", "-0.1"], "method.sparsity: sparsity must be in [0, 1)"),
    (["--method", "wanda", "--pattern", "4:4"], "method.pattern: pattern '4:4': N must satisfy 0 < N < M"),
    (["--method", "obs-magic", "--sparsity", "0.5"],
     "argument --method: invalid choice: 'obs-magic' (choose from 'magnitude'"),
    (["--method", "wanda", "--sparsity", "0.5", "--calibration", "no-such-corpus"],
     "calibration.source: 'no-such-corpus' is neither a named source"),
    (["--method", "wanda", "--sparsity", "0.5", "--model", "/no/such/model"], "model: '/no/such/model' is neither"),
    (["--method", "wanda", "--sparsity", "0.5", "--seqlen", "4096"],
     "calibration.seqlen: 4096 exceeds the model's context of 256 tokens"),
    (["--method", "wanda", "--sparsity", "0.5", "--num-samples", "5000"],
     "calibration.num_samples: 5000 windows of 32 tokens need 160000 tokens"),
    (["--method", "sparsegpt", "--sparsity", "0.5", "--option", "blocksize=0"], "method.blocksize"),
    (["--method", "wanda", "--sparsity", "0.5", "--zero-shot", "piqa", "--zero-shot-data", "/no/such/data"],
     "zero_shot.data_dir: '/no/such/data' is not a directory"),
    (["--method", "wanda", "--sparsity", "0.5", "--zero-shot", "piqa"], "zero_shot.data_dir: tasks piqa would be read"),
])
def test_bad_input_fails_with_the_field_named_and_no_output_left(extra, message, tiny_checkpoint, corpus_file,
                                                                  tmp_path, capsys, monkeypatch):
    import pruning.steps as steps

    def refuse_to_load(*_args, **_kwargs):
        raise AssertionError("the model was loaded before the input was validated")

    monkeypatch.setattr(steps, "load_model", refuse_to_load)
    monkeypatch.setattr(steps, "StreamedModel", refuse_to_load)
    output = tmp_path / "out"
    status, _, error = run_cli(base_arguments(tiny_checkpoint, corpus_file, output) + extra, capsys)
    assert status == 2
    assert message in error
    assert not output.exists()
    assert not [path for path in tmp_path.iterdir() if path.name.startswith(".out")]


def test_pickled_checkpoint_is_refused_before_loading(tmp_path, corpus_file, capsys):
    model_dir = tmp_path / "pickled"
    model_dir.mkdir()
    (model_dir / "config.json").write_text("{}")
    (model_dir / "pytorch_model.bin").write_bytes(b"\x80")
    status, _, error = run_cli(base_arguments(model_dir, corpus_file, tmp_path / "out") +
                               ["--method", "wanda", "--sparsity", "0.5"], capsys)
    assert status == 2 and "model: " in error and "holds no *.safetensors weights (found pytorch_model.bin" in error


def test_unreadable_checkpoint_is_refused_before_loading(tmp_path, tiny_checkpoint, corpus_file, capsys):
    import shutil

    broken = tmp_path / "broken"
    shutil.copytree(tiny_checkpoint, broken)
    (broken / "model.safetensors").write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json")
    status, _, error = run_cli(base_arguments(broken, corpus_file, tmp_path / "out") +
                               ["--method", "wanda", "--sparsity", "0.5"], capsys)
    assert status == 2 and "model: " in error and "is not a readable safetensors file" in error
    assert not (tmp_path / "out").exists()


def test_several_problems_are_reported_one_line_each(tiny_checkpoint, corpus_file, tmp_path, capsys):
    status, _, error = run_cli(base_arguments(tiny_checkpoint, corpus_file, tmp_path / "out") +
                               ["--method", "wanda", "--sparsity", "2", "--calibration", "nope"], capsys)
    lines = [line for line in error.splitlines() if line.startswith("pruneflow: error:")]
    assert status == 2 and len(lines) == 2


def test_prune_writes_a_loadable_model_and_its_record(tiny_checkpoint, corpus_file, tmp_path, capsys, shared_data):
    output = tmp_path / "pruned"
    status, printed, _ = run_cli(base_arguments(tiny_checkpoint, corpus_file, output) +
                                 ["--method", "sparsegpt", "--pattern", "2:4", "--eval-dense", "--zero-shot", "rte",
                                  "--zero-shot-data", str(shared_data), "--zero-shot-limit", "5"], capsys)
    assert status == 0
    assert "dense" in printed and "pruned" in printed and "token-ppl" in printed
    record = json.loads((output / "pruneflow.json").read_text())
    assert record["method"] == "sparsegpt" and record["pattern"] == "2:4"
    assert record["decoder_linear_sparsity"] == pytest.approx(0.5)
    assert record["config"]["method"]["blocksize"] == 128
    assert record["inputs"]["calibration"]["num_samples"] == 4
    assert record["inputs"]["model_digest"].startswith("safetensors-sha256:")
    assert {"fetch", "calibrate", "prune", "assemble", "evaluate", "evaluate_zero_shot"} <= set(
        record["run"]["step_seconds"])
    assert record["machine"]["forward_dtype"] == "float32" and record["machine"]["cpu_model"]
    assert record["zero_shot"]["tasks"]["rte"]["documents"] == 5 and record["dense_zero_shot"]["settings"]["limit"] == 5
    layers = record["engine"]["layers"]
    assert len(layers) == 14 and all(layer["sparsity"] == pytest.approx(0.5) for layer in layers)
    from huggingface_hub import ModelCard

    card = ModelCard.load(output / "README.md")  # the hub library's own parser of the card format
    assert card.data.library_name == "transformers" and {"pruneflow", "sparsegpt", "2:4"} <= set(card.data.tags)
    assert "pruned in one shot" in card.text and "method `sparsegpt`" in card.text
    protocol = record["perplexity"][0]["protocol"]
    assert protocol.replace("|", "\\|") in card.text  # escaped: a bare '|' would split the table's cells
    dense_cell = f"{record['dense_perplexity'][0]['perplexity']:.3f}"
    assert f"| {record['perplexity'][0]['perplexity']:.3f} | {dense_cell} |" in card.text
    (result,) = [item for item in card.data.eval_results if item.metric_type == "perplexity"]
    assert result.metric_value == pytest.approx(record["perplexity"][0]["perplexity"], abs=1e-4)
    assert protocol in result.metric_name and card.data.model_name == "tiny-llama-sparsegpt-2of4-0.5"
    assert {item.dataset_type for item in card.data.eval_results if item.metric_type == "accuracy"} == {"rte"}
    assert record["inputs"]["calibration"]["windows_sha256"] in card.text and "| rte |" in card.text
    config = json.loads((output / "config.json").read_text())
    # Readable by transformers 4.x too; what was pruned lives in the card and pruneflow.json, never in config.json
    # (vLLM refuses checkpoints that carry sparsity metadata).
    assert config["rope_theta"] == config["rope_parameters"]["rope_theta"] and config["torch_dtype"] == "float32"
    assert not {"sparsity", "sparsity_config", "quantization_config", "pruneflow", "_model_name_or_path"} & set(config)
    tokenizer_config = json.loads((output / "tokenizer_config.json").read_text())
    assert tokenizer_config["model_max_length"] == config["max_position_embeddings"]
    assert not {"local_files_only", "is_local"} & set(tokenizer_config)
    reloaded = AutoModelForCausalLM.from_pretrained(output)
    weight = reloaded.model.layers[1].mlp.down_proj.weight
    assert ((weight != 0).reshape(weight.shape[0], -1, 4).sum(dim=2) <= 2).all()
    assert torch.isfinite(weight).all()

    status, printed, _ = run_cli(["eval", "--model", str(output), "--dataset", str(corpus_file), "--seqlen", "32",
                                  "--max-windows", "2", "--cache-dir", str(tmp_path / "cache"),
                                  "--artifacts", str(tmp_path / "artifacts"), "--tasks", "rte",
                                  "--data-dir", str(shared_data), "--limit", "5"], capsys)
    assert status == 0
    evaluated = json.loads(printed)
    assert evaluated["perplexity"][0]["perplexity"] == pytest.approx(record["perplexity"][0]["perplexity"], rel=1e-5)
    assert evaluated["zero_shot"]["tasks"] == record["zero_shot"]["tasks"]  # same model, same documents

    speed = tmp_path / "speed.json"
    status, _, error = run_cli(["bench", "--model", str(tiny_checkpoint), "--pruned", str(output), "--devices", "tpu",
                                "--output", str(speed)], capsys)
    assert status == 2 and "--devices: unknown tpu" in error and not speed.exists()
    status, _, _ = run_cli(["bench", "--model", str(tiny_checkpoint), "--pruned", str(output), "--devices", "cpu",
                            "--min-run-time", "0.01", "--max-run-time", "0.05", "--output", str(speed)], capsys)
    assert status == 0
    forms = [entry["forms"] for entry in json.loads(speed.read_text())["devices"]["cpu"]["models"]]
    assert list(forms[0]) == ["dense"]
    assert set(forms[1]) == {"zeros", "csr", "semi-structured"}
    assert forms[1]["zeros"]["decode"]["batch16"]["tokens_per_second"] > 0

    # The sweep's settings from a params file, an option overriding one of them.
    params = tmp_path / "params.yaml"
    params.write_text(yaml.safe_dump({
        "models": [{"name": "tiny", "source": str(tiny_checkpoint)}], "prune": {"methods": ["wanda"], "sparsity": 0.5},
        "bench": {"devices": ["cpu"], "prefill_batches": [2], "prefill_tokens": 8, "decode_batches": [3],
                  "decode_new_tokens": 2, "gemm_layers": 1, "rounds": 3, "min_run_time": 0.01, "max_run_time": 0.05}}))
    status, _, _ = run_cli(["bench", "--model", str(tiny_checkpoint), "--pruned", str(output), "--params", str(params),
                            "--max-run-time", "0.02", "--output", str(speed)], capsys)
    assert status == 0
    measured = json.loads(speed.read_text())
    assert measured["settings"]["prefill_tokens"] == 8 and measured["settings"]["max_run_time"] == 0.02
    assert set(measured["devices"]) == {"cpu"}
    zeros = measured["devices"]["cpu"]["models"][1]["forms"]["zeros"]
    assert set(zeros["prefill"]) == {"2x8"} and set(zeros["decode"]) == {"batch3"}


def test_oats_from_the_command_line_with_options_prints_where_the_factored_checkpoint_is(
        tiny_checkpoint, corpus_file, tmp_path, capsys):
    output = tmp_path / "oats"
    previous_umask = os.umask(0o022)
    try:
        status, printed, _ = run_cli(base_arguments(tiny_checkpoint, corpus_file, output) +
                                     ["--method", "oats", "--sparsity", "0.6", "--option", "rank_ratio=0.2",
                                      "--option", "iterations=4"], capsys)
    finally:
        os.umask(previous_umask)
    assert status == 0 and f"sparse + low-rank checkpoint in {output / 'factored'}" in printed
    record = json.loads((output / "pruneflow.json").read_text())
    assert record["config"]["method"]["rank_ratio"] == 0.2
    assert record["decoder_linear_sparsity"] == pytest.approx(0.6, abs=0.01)

    # Readable by every user as umask 022 says; block-store files (hard-linked as the model's shards) read-only.
    stored = [*(tmp_path / "artifacts").rglob("block-*/weights.safetensors"),
              *(tmp_path / "artifacts").rglob("block-*/factors.safetensors")]
    assert stored and all(stat.S_IMODE(path.stat().st_mode) == 0o444 for path in stored)
    store_files = {path.stat().st_ino for path in stored}
    for path in [output, *output.rglob("*")]:
        mode = stat.S_IMODE(path.stat().st_mode)
        if path.is_dir():
            assert mode == 0o755, path
        else:
            assert mode == (0o444 if path.stat().st_ino in store_files else 0o644), path
    assert any(path.stat().st_ino in store_files for path in output.glob("*.safetensors"))


def test_yaml_job_file_is_accepted_and_overridden_by_options(tiny_checkpoint, corpus_file, tmp_path, capsys):
    job = tmp_path / "job.yaml"
    job.write_text(f"model: {tiny_checkpoint}\nmethod: {{method: magnitude, sparsity: 0.3}}\n"
                   f"calibration: {{source: {corpus_file}, num_samples: 2, seqlen: 32}}\n"
                   f"evaluation: [{{dataset: {corpus_file}, seqlen: 32, max_windows: 1}}]\n")
    output = tmp_path / "from-yaml"
    status, _, _ = run_cli(["prune", "--config", str(job), "--sparsity", "0.6", "--output", str(output),
                            "--cache-dir", str(tmp_path / "cache")], capsys)
    assert status == 0
    record = json.loads((output / "pruneflow.json").read_text())
    assert record["method"] == "magnitude" and record["target_sparsity"] == 0.6


def test_a_non_empty_output_is_kept_unless_overwrite_is_given(tiny_checkpoint, corpus_file, tmp_path, capsys,
                                                             monkeypatch):
    import pruning.steps as steps

    output = tmp_path / "keep"
    output.mkdir()
    (output / "notes.txt").write_text("mine")
    arguments = base_arguments(tiny_checkpoint, corpus_file, output) + ["--method", "magnitude", "--sparsity", "0.5"]
    with monkeypatch.context() as patched:
        patched.setattr(steps, "StreamedModel", None)  # refused before any model is opened
        status, _, error = run_cli(arguments, capsys)
    assert status == 2
    assert "output_dir: " in error and "exists and is not empty" in error and "--overwrite" in error
    assert [path.name for path in output.iterdir()] == ["notes.txt"]

    status, _, _ = run_cli(arguments + ["--overwrite"], capsys)
    assert status == 0
    assert (output / "pruneflow.json").is_file() and not (output / "notes.txt").exists()
    assert sorted(path.name for path in tmp_path.iterdir()) == ["artifacts", "keep"]  # no staging folder left


@pytest.mark.parametrize("uri, shown", [
    ("postgresql://bob:s3cret@db.example:5432/mlflow", "postgresql://bob:***@db.example:5432/mlflow"),
    ("http://bob@tracker:5000", "http://bob@tracker:5000"),
    ("sqlite:////work/mlruns.db", "sqlite:////work/mlruns.db"),
])
def test_a_password_in_the_tracking_uri_is_never_shown(uri, shown):
    from flows.tracking import redacted

    assert redacted(uri) == shown


def test_remote_code_from_a_job_file_needs_the_flag(tiny_checkpoint, corpus_file, tmp_path, capsys):
    job = tmp_path / "job.yaml"
    job.write_text("trust_remote_code: true\nmethod: {method: magnitude, sparsity: 0.5}\n")
    status, _, error = run_cli(base_arguments(tiny_checkpoint, corpus_file, tmp_path / "out") +
                               ["--config", str(job)], capsys)
    assert status == 2
    assert "trust_remote_code: the job file turns on running the model's own Python code" in error
    assert "--trust-remote-code" in error and not (tmp_path / "out").exists()


@pytest.mark.parametrize("content, message", [
    (None, "--config: '{path}' does not exist or is not a file"),
    ("method: [unclosed", "--config: '{path}' is not valid YAML"),
    ("- a\n- b\n", "--config: '{path}' must hold a mapping of fields (key: value), not a list"),
])
def test_a_bad_job_file_is_one_error_line(content, message, tiny_checkpoint, corpus_file, tmp_path, capsys):
    path = tmp_path / "job.yaml"
    if content is not None:
        path.write_text(content)
    status, _, error = run_cli(base_arguments(tiny_checkpoint, corpus_file, tmp_path / "out") +
                               ["--config", str(path)], capsys)
    assert status == 2
    assert "pruneflow: error: " + message.format(path=path) in error
    assert "Traceback" not in error


def test_report_without_metrics_and_ui_on_a_bad_port_are_refused(tmp_path, capsys):
    status, _, error = run_cli(["report", "--rows", str(tmp_path / "none"), "--output", str(tmp_path / "r")],
                               capsys)
    assert status == 2 and "--rows: " in error and not (tmp_path / "r").exists()
    assert main(["ui", "--port", "99999"]) == 2 and "99999 is not a TCP port" in capsys.readouterr().err
