"""Zero-shot evaluation through lm-eval with the shipped offline task YAMLs (real lm-eval, local files)."""

import importlib.metadata
from pathlib import Path

import lm_eval
import pytest
import torch
import yaml
from tiny_models import tiny_model
from transformers import AutoTokenizer

from pruning.config import ZeroShotConfig
from pruning.errors import ConfigError
from pruning.evaluation.lm_eval_tasks import local_data
from pruning.evaluation.zero_shot import LOCAL_TASKS, TASKS_DIRECTORY, check_zero_shot_tasks, zero_shot

STANDARD_TASKS = Path(lm_eval.__file__).parent / "tasks"
STANDARD_YAML = {"piqa": "piqa/piqa.yaml", "arc_easy": "arc/arc_easy.yaml", "boolq": "super_glue/boolq/default.yaml",
                 "rte": "glue/rte/default.yaml", "openbookqa": "openbookqa/openbookqa.yaml",
                 "lambada_openai": "lambada/lambada_openai.yaml", "winogrande": "winogrande/default.yaml",
                 "hellaswag": "hellaswag/hellaswag.yaml"}
# Documents in each local file (../shared/data/README.md) and the number of choices per document.
EXPECTED = {"piqa": (1838, 2), "arc_easy": (2376, None), "arc_challenge": (1172, None), "boolq": (3270, 2),
            "rte": (277, 2), "openbookqa": (500, 4), "lambada_openai": (5153, None), "winogrande": (1267, 2),
            "hellaswag": (10042, 4)}


class _KeepTags(yaml.SafeLoader):
    pass


_KeepTags.add_constructor("!function", lambda loader, node: f"!function {loader.construct_scalar(node)}")


def _fields(path: Path) -> dict:
    return yaml.load(path.read_text(), Loader=_KeepTags)


@pytest.mark.parametrize("task", sorted(STANDARD_YAML))
def test_local_yaml_keeps_the_standard_prompt_and_metrics(task):
    ours, standard = _fields(TASKS_DIRECTORY / f"{task}.yaml"), _fields(STANDARD_TASKS / STANDARD_YAML[task])
    assert ours["output_type"] == standard["output_type"]
    assert [metric["metric"] for metric in ours["metric_list"]] == [m["metric"] for m in standard["metric_list"]]
    if task != "winogrande":  # the standard functions are reimplemented in local_data; checked below
        for key in ("doc_to_text", "doc_to_target", "doc_to_choice"):
            assert ours.get(key) == standard.get(key), key


def test_winogrande_functions_match_lm_evals(shared_data):
    import importlib.util

    spec = importlib.util.spec_from_file_location("standard", STANDARD_TASKS / "winogrande/preprocess_winogrande.py")
    standard = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(standard)
    for document in local_data.winogrande(str(shared_data))["test"].select(range(50)):
        assert local_data.winogrande_context_index(document) == standard.doc_to_text(document)
        assert local_data.winogrande_continuation(document) == standard.doc_to_target(document)
        assert local_data.winogrande_contexts(document) == standard.doc_to_choice(document)


@pytest.mark.parametrize("task", LOCAL_TASKS)
def test_loaders_read_every_document_with_valid_labels(task, shared_data):
    rows = getattr(local_data, task)(str(shared_data))["test"]
    count, choices = EXPECTED[task]
    assert len(rows) == count
    first = rows[0]
    if task in ("arc_easy", "arc_challenge", "openbookqa"):
        assert all(row["answerKey"] in row["choices"]["label"] for row in rows)
        assert all(len(row["choices"]["text"]) == len(row["choices"]["label"]) >= 3 for row in rows)
    elif task == "hellaswag":
        assert {len(row["choices"]) for row in rows} == {choices} and {row["label"] for row in rows} == {0, 1, 2, 3}
        assert first["query"].startswith("Roof shingle removal: A man is sitting on a roof.")
    elif task == "winogrande":
        assert {row["answer"] for row in rows} == {"1", "2"} and all("_" in row["sentence"] for row in rows)
    elif task == "lambada_openai":
        assert all(len(row["text"].split(" ")) > 1 for row in rows)
    else:
        assert {row["label"] for row in rows} == set(range(choices))
    if task == "openbookqa":
        assert first["question_stem"].startswith("A person wants to start saving money")
        assert first["choices"]["text"][1] == "quit eating lunch out" and first["answerKey"] == "B"


def test_tiny_model_on_two_local_tasks(shared_data, tiny_tokenizer_dir):
    tokenizer = AutoTokenizer.from_pretrained(tiny_tokenizer_dir)
    result = zero_shot(tiny_model("llama"), tokenizer, ("piqa", "arc_easy"), shared_data, limit=6, batch_size=4,
                       device=torch.device("cpu")).model_dump(mode="json")
    assert set(result["tasks"]) == {"piqa", "arc_easy"}
    for metrics in result["tasks"].values():
        assert set(metrics) == {"acc", "acc_norm", "documents"} and metrics["documents"] == 6
        assert 0.0 <= metrics["acc"] <= 1.0 and metrics["acc"] * 6 == pytest.approx(round(metrics["acc"] * 6))
    assert result["average_accuracy"] == pytest.approx((result["tasks"]["piqa"]["acc"]
                                                        + result["tasks"]["arc_easy"]["acc"]) / 2)
    assert result["settings"] == {"lm_eval_version": importlib.metadata.version("lm_eval"), "limit": 6,
                                  "batch_size": 4, "num_fewshot": 0, "source": str(shared_data)}


def test_bad_zero_shot_settings_fail_with_the_field_and_the_fix(tmp_path, shared_data, monkeypatch):
    with pytest.raises(ConfigError, match="zero_shot.tasks: no local YAML for 'mmlu'"):
        check_zero_shot_tasks(("piqa", "mmlu"), shared_data)
    with pytest.raises(ConfigError, match="is not a directory.*or set zero_shot to null"):
        check_zero_shot_tasks(("piqa",), tmp_path / "missing")
    (tmp_path / "arc").mkdir()
    with pytest.raises(ConfigError, match=r"lacks arc/ARC-Challenge-Test.jsonl \(for arc_challenge\)"):
        check_zero_shot_tasks(("arc_challenge",), tmp_path)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(ConfigError, match="hub, which is offline"):
        check_zero_shot_tasks(("piqa",), None)
    with pytest.raises(ValueError, match="empty task name"):  # `--tasks piqa,` names an empty task
        ZeroShotConfig(tasks=("piqa", ""))
