"""Calibration sets: deterministic, non-overlapping, checked against the corpus size, and disjoint from evaluation."""

import json

import pytest
import torch
from transformers import AutoTokenizer

from pruning.data.calibration import build_calibration_set, load_calibration_set, sample_windows, save_calibration_set
from pruning.data.corpora import TextCorpus, TextProvenance, check_text_source, load_corpus, wiki_summaries_split


def test_windows_are_deterministic_distinct_and_non_overlapping():
    tokens = torch.arange(1000)
    first = sample_windows(tokens, num_samples=8, seqlen=100, seed=3)
    assert torch.equal(first, sample_windows(tokens, 8, 100, seed=3))
    assert not torch.equal(first, sample_windows(tokens, 8, 100, seed=4))
    starts = sorted(int(window[0]) for window in first)
    assert all(start % 100 == 0 for start in starts) and len(set(starts)) == 8
    assert all(torch.equal(window, torch.arange(int(window[0]), int(window[0]) + 100)) for window in first)


def test_more_calibration_tokens_than_the_corpus_holds_is_a_clear_error():
    with pytest.raises(ValueError, match=r"calibration.num_samples: 11 windows of 100 tokens need 1100 tokens"):
        sample_windows(torch.arange(1000), num_samples=11, seqlen=100, seed=0)


def test_an_empty_corpus_is_named_as_the_source_not_the_sample_count():
    with pytest.raises(ValueError, match=r"calibration.source: the text holds 0 tokens, not one window of 100"):
        sample_windows(torch.arange(0), num_samples=4, seqlen=100, seed=0)


def test_calibration_set_round_trips_with_its_manifest(tmp_path, tiny_tokenizer_dir):
    tokenizer = AutoTokenizer.from_pretrained(tiny_tokenizer_dir)
    corpus = TextCorpus(["The quick brown fox jumps over the lazy dog. " * 40, "Pruning removes weights. " * 40],
                        TextProvenance(source="inline"))
    calibration = build_calibration_set(corpus, tokenizer, num_samples=4, seqlen=32, seed=0)
    save_calibration_set(calibration, tmp_path / "calibration")
    loaded = load_calibration_set(tmp_path / "calibration")
    assert torch.equal(loaded.input_ids, calibration.input_ids)
    assert loaded.manifest.seed == 0 and loaded.manifest.num_samples == 4 and loaded.manifest.seqlen == 32
    assert loaded.manifest.tokenizer.vocab_sha256
    assert not list(tmp_path.glob(".calibration.partial-*"))


@pytest.mark.parametrize("suffix", [".txt", ".jsonl", ".json", ".parquet"])
def test_local_files_of_each_format_load_their_text(tmp_path, suffix):
    rows = [{"text": f"document number {index}"} for index in range(3)]
    path = tmp_path / f"corpus{suffix}"
    if suffix == ".txt":
        path.write_text("\n".join(row["text"] for row in rows))
    elif suffix == ".jsonl":
        path.write_text("\n".join(json.dumps(row) for row in rows))
    elif suffix == ".json":
        path.write_text(json.dumps(rows))
    else:
        import pyarrow as arrow
        import pyarrow.parquet as parquet

        parquet.write_table(arrow.Table.from_pylist(rows), path)
    corpus = load_corpus(str(path), "calibration", tmp_path)
    assert "document number 2" in "\n".join(corpus.documents)
    assert len(corpus.provenance.sha256) == 64


def test_shared_wikitext_pages_load_from_a_save_to_disk_folder(shared_data, tmp_path):
    folder = shared_data / "wikitext-2" / "wikitext_document_level-wikitext-2-raw-v1" / "test"
    corpus = load_corpus(str(folder), "evaluation", tmp_path)
    assert len(corpus.documents) == 62
    assert corpus.documents[0].startswith(" = Robert Boulter = ")
    import datasets

    assert corpus.documents == datasets.load_from_disk(str(folder))["page"]  # read as datasets itself reads it
    assert corpus.provenance.field == "page"


def test_text_source_errors_say_what_is_accepted(tmp_path):
    with pytest.raises(ValueError, match="'nope' is neither a named source"):
        check_text_source("nope")
    (tmp_path / "data.csv").write_text("a,b")
    with pytest.raises(ValueError, match="suffix '.csv'"):
        check_text_source(str(tmp_path / "data.csv"))


def test_wiki_summaries_calibration_and_evaluation_articles_never_overlap(cache_dir):
    calibration = load_corpus("wiki-summaries", "calibration", cache_dir)
    evaluation = load_corpus("wiki-summaries", "evaluation", cache_dir)
    assert len(calibration.documents) + len(evaluation.documents) == 10033
    assert 800 < len(evaluation.documents) < 1200
    calibration_titles = {document.split("\n", 1)[0] for document in calibration.documents}
    evaluation_titles = {document.split("\n", 1)[0] for document in evaluation.documents}
    assert not calibration_titles & evaluation_titles
    assert not set(calibration.documents) & set(evaluation.documents)
    assert all(wiki_summaries_split(title) == "evaluation" for title in evaluation_titles)
    assert calibration.provenance.sha256 == evaluation.provenance.sha256
