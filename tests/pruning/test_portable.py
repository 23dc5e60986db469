"""Model folders that transformers 4.x and 5.x read alike: the legacy keys beside the new ones, no session keys."""

import json

from transformers import AutoTokenizer, Gemma3TextConfig, LlamaConfig

from pruning.models.portable import SESSION_KEYS, make_portable, portable_config, portable_tokenizer_config


def test_llama_config_gets_rope_theta_and_torch_dtype_beside_the_v5_keys():
    config = LlamaConfig(hidden_size=64, num_attention_heads=4, rope_parameters={"rope_type": "default",
                                                                                 "rope_theta": 100000.0})
    written = {**config.to_dict(), "_model_name_or_path": "Smollm2 135M 8k Lc100K Mix1 Ep2"}
    portable = portable_config(written)
    assert portable["rope_theta"] == 100000.0 and portable["rope_parameters"] == written["rope_parameters"]
    assert portable["torch_dtype"] == portable["dtype"] and "rope_scaling" not in portable
    assert not set(SESSION_KEYS) & set(portable)
    assert LlamaConfig.from_dict(portable).rope_parameters["rope_theta"] == 100000.0  # 5.x reads it as before


def test_scaled_rope_and_per_layer_type_rope_keep_their_legacy_forms():
    scaled = portable_config({"rope_parameters": {"rope_type": "llama3", "rope_theta": 500000.0, "factor": 8.0}})
    assert scaled["rope_theta"] == 500000.0 and scaled["rope_scaling"] == {"rope_type": "llama3", "factor": 8.0}
    gemma = portable_config(Gemma3TextConfig(hidden_size=64, num_attention_heads=4, head_dim=16).to_dict())
    rope = Gemma3TextConfig(hidden_size=64, num_attention_heads=4, head_dim=16).rope_parameters
    assert gemma["rope_theta"] == rope["full_attention"]["rope_theta"]
    assert gemma["rope_local_base_freq"] == rope["sliding_attention"]["rope_theta"]


def test_tokenizer_config_names_a_class_both_versions_know_and_the_real_context():
    written = {"tokenizer_class": "TokenizersBackend", "model_max_length": 1000000000000000019884624838656,
               "local_files_only": True, "is_local": True, "eos_token": "<|im_end|>"}
    portable = portable_tokenizer_config(written, 8192)
    assert portable == {"tokenizer_class": "PreTrainedTokenizerFast", "model_max_length": 8192,
                        "eos_token": "<|im_end|>"}
    assert portable_tokenizer_config({"model_max_length": 2048}, 8192)["model_max_length"] == 2048


def test_a_tokenizer_folder_made_portable_loads_with_its_context_and_is_stable(tiny_tokenizer_dir, tmp_path):
    folder = tmp_path / "model"
    AutoTokenizer.from_pretrained(tiny_tokenizer_dir).save_pretrained(folder)
    (folder / "config.json").write_text(json.dumps(LlamaConfig(max_position_embeddings=256).to_dict()))
    make_portable(folder)
    first = {path.name: path.read_bytes() for path in folder.iterdir()}
    make_portable(folder)
    assert first == {path.name: path.read_bytes() for path in folder.iterdir()}
    tokenizer = AutoTokenizer.from_pretrained(folder)
    assert tokenizer.model_max_length == 256
    assert json.loads((folder / "tokenizer_config.json").read_text())["tokenizer_class"] != "TokenizersBackend"
