"""The server-step and configuration refactor (issue 18, items 2 and 3) changed no result:
short runs end with the models recorded before it (``tests/data/step_reference.pt``).

The reference was written by ``python tests/test_step_reference.py --record`` on the code
before the refactor (one torch thread, CPU). On that machine the models are bit-identical;
elsewhere BLAS may round differently, hence the tolerance of the comparison.
"""

import sys
from pathlib import Path

import pytest
import torch

REFERENCE = Path(__file__).resolve().parent / "data" / "step_reference.pt"

MLP = {"name": "mlp", "params": {"hidden": [8], "dropout": 0.1}}
CONFIGS = {
    "anarchic-pipeline": {
        "workers": {"n": 12, "f": 2, "batch_size": 16},
        "model": MLP,
        "data": {"partition": "dirichlet", "alpha": 0.5},
        "attack": {"name": "alie"},
        "faults": [{"name": "straggler", "params": {"delay": 1, "workers": [1]}},
                   {"name": "drop", "params": {"q": 0.1}},
                   {"name": "nonfinite", "params": {"prob": 0.3, "workers": [0]}}],
        "participation": {"arrival": {"name": "markov", "params": {"p_on": 0.8, "p_off": 0.1}},
                          "local_steps": {"name": "uniform-steps", "params": {"low": 1, "high": 2}},
                          "delay": {"name": "uniform-delay", "params": {"max_delay": 2}}},
        "aggregator": {"pipeline": [{"name": "bucketing", "params": {"s": 2}}, {"name": "centered-clipping"}]},
        "optimizer": {"lr": 0.5, "momentum": 0.9, "momentum_at": "worker"},
        "run": {"steps": 12, "eval_every": 6, "seed": 11, "out_dir": ""},
    },
    "afa-cs": {
        "mode": "afa-cs",
        "workers": {"n": 6, "f": 1, "batch_size": 16},
        "model": MLP,
        "attack": {"name": "gaussian", "params": {"sigma": 1.0}},
        "faults": [{"name": "bit-flip", "params": {"count": 2}}],
        "participation": {"arrival": {"name": "bernoulli", "params": {"p": 0.6}}},
        "aggregator": {"name": "trimmed-mean"},
        "optimizer": {"lr": 1.0, "local_lr": 0.3},
        "run": {"steps": 12, "eval_every": 6, "seed": 12, "out_dir": ""},
    },
    "server-momentum-poisoning": {
        "workers": {"n": 6, "f": 1, "batch_size": 16},
        "model": {"name": "logistic"},
        "poisoning": {"name": "label-flip"},
        "aggregator": {"name": "median"},
        "optimizer": {"lr": 0.3, "momentum": 0.9, "weight_decay": 1e-3},
        "run": {"steps": 12, "eval_every": 6, "seed": 13, "out_dir": ""},
    },
    "krum-opt-attack": {
        "workers": {"n": 9, "f": 2, "batch_size": 16},
        "model": {"name": "logistic"},
        "attack": {"name": "alie-opt"},
        "aggregator": {"name": "krum"},
        "optimizer": {"lr": 0.3},
        "run": {"steps": 8, "eval_every": 4, "seed": 14, "out_dir": ""},
    },
    "nonfinite-skip": {
        "workers": {"n": 6, "f": 1, "batch_size": 16},
        "model": {"name": "logistic"},
        "attack": {"name": "nan"},
        "faults": [{"name": "nonfinite", "params": {"prob": 0.5, "workers": [0]}}],
        "aggregator": {"name": "median"},
        "optimizer": {"lr": 0.5},
        "run": {"steps": 12, "eval_every": 6, "seed": 3, "out_dir": ""},
    },
    "p2p": {
        "trainer": "peer-to-peer",
        "workers": {"n": 7, "f": 2, "batch_size": 16},
        "model": MLP,
        "attack": {"name": "alie"},
        "optimizer": {"lr": 0.5, "momentum": 0.9},
        "p2p": {"sample": True},
        "run": {"steps": 12, "eval_every": 6, "seed": 15, "out_dir": ""},
    },
}


def final_model(name):
    import warnings

    from robustagg.train import build

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        trainer = build(CONFIGS[name])
        history = trainer.run()
    x = trainer.theta if trainer.kind == "peer-to-peer" else trainer.x
    return x.detach().clone(), [dict(r) for r in history]


@pytest.mark.usefixtures("one_thread")
@pytest.mark.parametrize("name", list(CONFIGS))
def test_runs_end_with_the_models_recorded_before_the_refactor(name):
    reference = torch.load(REFERENCE, weights_only=True)[name]
    x, history = final_model(name)
    torch.testing.assert_close(x, reference["x"], rtol=1e-5, atol=1e-6)
    assert [r["step"] for r in history] == reference["steps"]
    assert [r.get("skipped", 0.0) for r in history] == reference["skipped"]


if __name__ == "__main__" and "--record" in sys.argv:
    torch.set_num_threads(1)
    out = {}
    for key in CONFIGS:
        x, history = final_model(key)
        out[key] = {"x": x, "steps": [r["step"] for r in history], "skipped": [r.get("skipped", 0.0) for r in history]}
        print(key, tuple(x.shape), float(x.norm()), out[key]["skipped"])
    REFERENCE.parent.mkdir(exist_ok=True)
    torch.save(out, REFERENCE)
