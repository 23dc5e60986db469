"""MLflow model registry entries for pruned models: a pyfunc that wraps the saved HF directory."""

from __future__ import annotations

from typing import Any

import mlflow.pyfunc
from mlflow.pyfunc import PythonModel


class PrunedCausalLM(PythonModel):  # type: ignore[misc]
    """Loads the pruned HF directory (artifact `model_dir`); predicts a short greedy continuation per prompt."""

    def load_context(self, context: Any) -> None:
        from transformers import AutoModelForCausalLM, AutoTokenizer

        self.tokenizer = AutoTokenizer.from_pretrained(context.artifacts["model_dir"])
        self.model = AutoModelForCausalLM.from_pretrained(context.artifacts["model_dir"]).eval()

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


def register_pruned_model(model_dir: str, registered_name: str) -> str:
    """Log the directory as a pyfunc model in the active run and register it; return the version."""
    import torch
    import transformers

    info = mlflow.pyfunc.log_model(name="model", python_model=PrunedCausalLM(), artifacts={"model_dir": model_dir},
                                   pip_requirements=[f"torch=={torch.__version__.split('+')[0]}",
                                                     f"transformers=={transformers.__version__}"],
                                   registered_model_name=registered_name)
    return str(info.registered_model_version)
