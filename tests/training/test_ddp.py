"""DDP with 2 CPU processes (gloo): training runs and both ranks end with the same weights.

Strategy "ddp" (Lightning relaunches the script for rank 1) rather than "ddp_spawn": the latter pickles the
module, and MoDEPolicy's Normalizer holds a lambda hook that cannot be pickled (reported to its owner).
"""

import json
import subprocess
import sys
import textwrap

import pytest

from tests.training.conftest import TINY_POLICY

SCRIPT = textwrap.dedent(
    """
    import hashlib, json, sys
    import lightning as L

    from mode_policy.training.train import train


    class DumpWeights(L.Callback):
        # Runs in each spawned rank: a digest of the raw (pre-EMA-copy) and final weights.
        def __init__(self, out):
            self.out = out

        def on_train_end(self, trainer, module):
            digest = hashlib.sha256()
            for value in module.state_dict().values():
                digest.update(value.detach().cpu().numpy().tobytes())
            with open(f"{self.out}/rank{trainer.global_rank}.json", "w") as f:
                json.dump({"digest": digest.hexdigest(), "world": trainer.world_size,
                           "step": trainer.global_step}, f)


    if __name__ == "__main__":
        data, out, policy = sys.argv[1], sys.argv[2], json.loads(sys.argv[3])
        train(data, f"{out}/run", steps=4, batch_size=8, seed=0, checkpoint_every=2, log_every=1,
              progress=False, devices=2, strategy="ddp", accelerator="cpu",
              policy_overrides=policy, extra_callbacks=[DumpWeights(out)])
    """
)


@pytest.mark.slow
def test_ddp_two_cpu_ranks_agree(tiny_dataset, tmp_path):
    script = tmp_path / "ddp_train.py"
    script.write_text(SCRIPT)
    # A subprocess with a hard timeout: a hung collective must fail the test, not the suite.
    completed = subprocess.run(
        [sys.executable, str(script), str(tiny_dataset), str(tmp_path), json.dumps(TINY_POLICY)],
        capture_output=True, text=True, timeout=240, env={**__import__("os").environ, "OMP_NUM_THREADS": "1"},
    )  # fmt: skip
    assert completed.returncode == 0, completed.stderr[-3000:]
    ranks = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1)]
    assert ranks[0]["world"] == ranks[1]["world"] == 2
    assert ranks[0]["step"] == ranks[1]["step"] == 4
    assert ranks[0]["digest"] == ranks[1]["digest"]
    assert (tmp_path / "run" / "policy" / "model.safetensors").is_file()
    assert (tmp_path / "run" / "checkpoints" / "last.ckpt").is_file()
