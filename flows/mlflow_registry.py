"""MLflow model registry entries for pruned models: the saved HF directory plus the pyfunc's source file."""

from __future__ import annotations

from pathlib import Path

MODEL_CODE = Path(__file__).with_name("mlflow_pyfunc.py")


def register_pruned_model(model_dir: str, registered_name: str) -> str:
    """Log the directory as a pyfunc model (from code, no pickle) in the active run and register it; return the
    version."""
    import mlflow.pyfunc
    import torch
    import transformers

    info = mlflow.pyfunc.log_model(name="model", python_model=str(MODEL_CODE), artifacts={"model_dir": model_dir},
                                   pip_requirements=[f"torch=={torch.__version__.split('+')[0]}",
                                                     f"transformers=={transformers.__version__}"],
                                   registered_model_name=registered_name)
    return str(info.registered_model_version)
