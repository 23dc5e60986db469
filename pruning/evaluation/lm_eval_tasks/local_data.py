"""Loaders for the offline lm-eval tasks: each reads one benchmark's local files and returns its rows in
the fields lm-eval's standard task of the same name reads, as a DatasetDict with one `test` split.

lm-eval calls them as `custom_dataset(**metadata)`; `data_dir` comes from the TaskManager's metadata
(pruneflow passes the user's data directory there). The file each task needs is `TASK_FILES[task]`.
"""

from __future__ import annotations

import bz2
import json
import re
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # imported where rows become a dataset: `datasets` costs a second and ~100 MB to import
    import datasets

TASK_FILES = {
    "piqa": ("piqa/valid.jsonl", "piqa/valid-labels.lst"),
    "arc_easy": ("arc/ARC-Easy-Test.jsonl",),
    "arc_challenge": ("arc/ARC-Challenge-Test.jsonl",),
    "boolq": ("boolq/val.jsonl",),
    "rte": ("rte/val.jsonl",),
    "openbookqa": ("openbookqa/test.tsv",),
    "lambada_openai": ("lambada/lambada_test.jsonl",),
    "winogrande": ("winogrande/winogrande_xl/validation/data-00000-of-00001.arrow",),
    "hellaswag": ("hellaswag/hellaswag_val_full.txt.bz2",),
}


def _split(rows: list[dict[str, Any]]) -> datasets.DatasetDict:
    import datasets

    return datasets.DatasetDict({"test": datasets.Dataset.from_list(rows)})


def _json_lines(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def piqa(data_dir: str, **_: Any) -> datasets.DatasetDict:
    """{"goal", "sol1", "sol2"} with the label (index of the right solution) from the line-aligned .lst."""
    directory = Path(data_dir) / "piqa"
    labels = (directory / "valid-labels.lst").read_text().split()
    rows = _json_lines(directory / "valid.jsonl")
    return _split([{"goal": row["goal"], "sol1": row["sol1"], "sol2": row["sol2"], "label": int(label)}
                   for row, label in zip(rows, labels, strict=True)])


def _arc(path: Path) -> datasets.DatasetDict:
    """ARC's {"question": {"stem", "choices": [{"text", "label"}]}, "answerKey"} -> the HF ai2_arc fields."""
    return _split([{"id": row["id"], "question": row["question"]["stem"],
                    "choices": {"text": [choice["text"] for choice in row["question"]["choices"]],
                                "label": [choice["label"] for choice in row["question"]["choices"]]},
                    "answerKey": row["answerKey"]} for row in _json_lines(path)])


def arc_easy(data_dir: str, **_: Any) -> datasets.DatasetDict:
    return _arc(Path(data_dir) / TASK_FILES["arc_easy"][0])


def arc_challenge(data_dir: str, **_: Any) -> datasets.DatasetDict:
    return _arc(Path(data_dir) / TASK_FILES["arc_challenge"][0])


def boolq(data_dir: str, **_: Any) -> datasets.DatasetDict:
    """SuperGLUE BoolQ: label "true"/"false" (strings in this copy, booleans in others) -> 1/0 (["no", "yes"])."""
    return _split([{"question": row["question"], "passage": row["passage"],
                    "label": int(str(row["label"]).lower() == "true")}
                   for row in _json_lines(Path(data_dir) / TASK_FILES["boolq"][0])])


def rte(data_dir: str, **_: Any) -> datasets.DatasetDict:
    """SuperGLUE RTE's premise/hypothesis as GLUE RTE's sentence1/sentence2; entailment = 0 ("True")."""
    return _split([{"sentence1": row["premise"], "sentence2": row["hypothesis"],
                    "label": 0 if row["label"] == "entailment" else 1}
                   for row in _json_lines(Path(data_dir) / TASK_FILES["rte"][0])])


_OPTION = re.compile(r"\(([A-D])\) ")


def openbookqa(data_dir: str, **_: Any) -> datasets.DatasetDict:
    """The Main test TSV: `(A) ... (B) ...` choices split into the HF openbookqa fields."""
    lines = (Path(data_dir) / TASK_FILES["openbookqa"][0]).read_text(encoding="utf-8").splitlines()
    rows = []
    for line in lines[1:]:
        identifier, stem, choices, _complete, answer = line.split("\t")
        parts = _OPTION.split(choices)[1:]  # [label, text, label, text, ...]
        rows.append({"id": identifier, "question_stem": stem,
                     "choices": {"label": parts[0::2], "text": [text.strip() for text in parts[1::2]]},
                     "answerKey": answer.strip()})
    return _split(rows)


def lambada_openai(data_dir: str, **_: Any) -> datasets.DatasetDict:
    return _split([{"text": row["text"]} for row in _json_lines(Path(data_dir) / TASK_FILES["lambada_openai"][0])])


def winogrande(data_dir: str, **_: Any) -> datasets.DatasetDict:
    import datasets

    table = datasets.Dataset.from_file(str(Path(data_dir) / TASK_FILES["winogrande"][0]))
    return datasets.DatasetDict({"test": table})


def hellaswag(data_dir: str, **_: Any) -> datasets.DatasetDict:
    """6 lines per item: `activity_label: ctx` (already cleaned of [title]/[step] markers), label, 4 endings."""
    with bz2.open(Path(data_dir) / TASK_FILES["hellaswag"][0], "rt", encoding="utf-8") as handle:
        lines = handle.read().splitlines()
    return _split([{"query": lines[start].strip(), "label": int(lines[start + 1]),
                    "choices": [ending.strip() for ending in lines[start + 2:start + 6]]}
                   for start in range(0, len(lines) - 5, 6)])


def winogrande_context_index(doc: dict[str, Any]) -> int:
    """lm-eval's partial scoring: the gold option fills the blank in the context; the rest is the target."""
    return {"1": 0, "2": 1}[doc["answer"]]


def winogrande_continuation(doc: dict[str, Any]) -> str:
    return str(doc["sentence"][doc["sentence"].index("_") + 1:].strip())


def winogrande_contexts(doc: dict[str, Any]) -> list[str]:
    blank = doc["sentence"].index("_")
    return [doc["sentence"][:blank] + option for option in (doc["option1"], doc["option2"])]
