"""DDP with 2 CPU processes (gloo): training runs and both ranks end with the same weights; a dataset
mixture is sharded across the ranks without overlap.

Strategy "ddp" (Lightning relaunches the script for rank 1) rather than "ddp_spawn": the latter pickles the
module, and MoDEPolicy's Normalizer holds a lambda hook that cannot be pickled (reported to its owner).
"""

import json
import os
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
        # Runs in each spawned rank: a digest of the raw (pre-EMA-copy) and final weights, and which
        # windows (dataset, episode, frame) each step's batch held.
        def __init__(self, out):
            self.out, self.batches = out, []

        def on_train_batch_start(self, trainer, module, batch, batch_idx):
            rows = zip(batch.get("dataset_index", batch["episode_index"] * 0).tolist(),
                       batch["episode_index"].tolist(), batch["frame_index"].tolist())
            self.batches.append([list(row) for row in rows])

        def on_train_end(self, trainer, module):
            digest = hashlib.sha256()
            for value in module.state_dict().values():
                digest.update(value.detach().cpu().numpy().tobytes())
            with open(f"{self.out}/rank{trainer.global_rank}.json", "w") as f:
                json.dump({"digest": digest.hexdigest(), "world": trainer.world_size,
                           "step": trainer.global_step, "batches": self.batches}, f)


    if __name__ == "__main__":
        data, out, policy = json.loads(sys.argv[1]), sys.argv[2], json.loads(sys.argv[3])
        options = json.loads(sys.argv[4])
        train(data, f"{out}/run", seed=0, checkpoint_every=2, log_every=1, progress=False, devices=2,
              strategy="ddp", accelerator="cpu", policy_overrides=policy, extra_callbacks=[DumpWeights(out)],
              **options)
    """
)


def run_ddp(tmp_path, data, **options) -> list[dict]:
    """Train on ``data`` (a folder or a list of folders) with 2 ranks; each rank's record."""
    script = tmp_path / "ddp_train.py"
    script.write_text(SCRIPT)
    data = [str(d) for d in data] if isinstance(data, list) else str(data)
    argv = [sys.executable, str(script), json.dumps(data), str(tmp_path), json.dumps(TINY_POLICY),
            json.dumps(options)]  # fmt: skip
    # A subprocess with a hard timeout: a hung collective must fail the test, not the suite.
    completed = subprocess.run(
        argv, capture_output=True, text=True, timeout=240, env={**os.environ, "OMP_NUM_THREADS": "1"}
    )
    assert completed.returncode == 0, completed.stderr[-3000:]
    return [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1)]


@pytest.mark.slow
def test_ddp_two_cpu_ranks_agree(tiny_dataset, tmp_path):
    ranks = run_ddp(tmp_path, tiny_dataset, steps=4, batch_size=8)
    assert ranks[0]["world"] == ranks[1]["world"] == 2
    assert ranks[0]["step"] == ranks[1]["step"] == 4
    assert ranks[0]["digest"] == ranks[1]["digest"]
    assert (tmp_path / "run" / "policy" / "model.safetensors").is_file()
    assert (tmp_path / "run" / "checkpoints" / "last.ckpt").is_file()


@pytest.mark.slow
def test_ddp_shards_a_mixture_across_ranks_without_overlap(tmp_path):
    from tests.data.mixture_fixture import write_small_dataset

    sim = write_small_dataset(tmp_path / "sim", ("reach", "push"), length=8)  # 32 windows each
    real = write_small_dataset(tmp_path / "real", ("pick", "push"), length=8, shift=2.0, seed=1)
    ranks = run_ddp(tmp_path, [sim, real], steps=3, batch_size=4, dataset_weights=[0.5, 0.5],
                    normalization="per-dataset")  # fmt: skip
    assert ranks[0]["step"] == ranks[1]["step"] == 3 and ranks[0]["digest"] == ranks[1]["digest"]
    # 3 steps x 2 ranks x 4 = 24 windows, fewer than either dataset's 32: one epoch of each, so every
    # window drawn is drawn once, whichever rank and step drew it.
    windows = [tuple(row) for rank in ranks for batch in rank["batches"] for row in batch]
    assert all(len(batch) == 4 for rank in ranks for batch in rank["batches"])
    assert len(windows) == 24 and len(set(windows)) == 24
    assert {dataset for dataset, _, _ in windows} == {0, 1}
