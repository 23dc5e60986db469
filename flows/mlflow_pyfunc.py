"""The MLflow pyfunc of a registered pruned model, logged as code (MLflow "models from code"), so the registry
holds this file and the HF directory, never a pickled object; the weights load from safetensors only."""

from __future__ import annotations

from typing import Any

import mlflow.models
from mlflow.pyfunc import PythonModel


class PrunedCausalLM(PythonModel):  # type: ignore[misc]
    """Loads the pruned HF directory (artifact `model_dir`); predicts a short greedy continuation per prompt."""

    def load_context(self, context: Any) -> None:
        from transformers import AutoModelForCausalLM, AutoTokenizer

        directory = context.artifacts["model_dir"]
        self.tokenizer = AutoTokenizer.from_pretrained(directory)
        self.model = AutoModelForCausalLM.from_pretrained(directory, use_safetensors=True).eval()

    def predict(self, context: Any, model_input: list[str], params: dict[str, Any] | None = None) -> list[str]:
        import torch

        completions: list[str] = []
        for prompt in model_input:
            encoded = self.tokenizer(prompt, return_tensors="pt")
            with torch.no_grad():
                generated = self.model.generate(**encoded, max_new_tokens=32, do_sample=False)
            completions.append(str(self.tokenizer.decode(generated[0, encoded["input_ids"].shape[1]:],
                                                         skip_special_tokens=True)))
        return completions


mlflow.models.set_model(PrunedCausalLM())
