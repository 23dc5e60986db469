"""The two shipped params profiles: they validate into jobs, and the best combination is where the README says."""

from pathlib import Path

import pytest

from flows.params import load_params

REPO = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize("profile", ["params.yaml", "params-full.yaml"])
def test_each_profile_validates_into_one_job_per_method_with_admm_among_them(profile):
    params = load_params(REPO / profile)
    methods = [job.method.method for job in params.jobs]
    assert methods == list(params.prune.methods)
    assert "admm" in methods and "sparsegpt" in methods


def test_only_the_full_profile_gives_admm_block_reconstruction():
    def admm_engine(profile):
        return next(job.engine for job in load_params(REPO / profile).jobs if job.method.method == "admm")

    full = admm_engine("params-full.yaml")
    assert full.reconstruction is not None and full.reconstruction.epochs == 4
    assert admm_engine("params.yaml").reconstruction is None
    # the other methods of the full profile keep the plain engine
    others = [job.engine.reconstruction for job in load_params(REPO / "params-full.yaml").jobs
              if job.method.method != "admm"]
    assert others and all(reconstruction is None for reconstruction in others)


def test_the_oats_vision_profile_is_the_papers_grid():
    params = load_params(REPO / "params-oats-vision.yaml")
    assert [model.source for model in params.models] == ["hf://google/vit-base-patch16-224",
                                                         "hf://facebook/dinov2-giant-imagenet1k-1-layer"]
    oats = [job.method for job in params.jobs if job.method.method == "oats"]
    assert sorted(method.target_sparsity for method in oats) == [0.3, 0.3, 0.4, 0.4, 0.5, 0.5]
    assert all((method.rank_ratio, method.iterations) == (0.2, 80) for method in oats)
    assert len(params.jobs) == 18 and params.calibration.num_samples == 2048
    assert "max_windows" not in params.evaluation[0].model_fields_set  # every validation image
