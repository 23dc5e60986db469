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
