import json
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from mode_policy.data.errors import DatasetError
from mode_policy.data.lerobot import LeRobotDataset, LeRobotDatasetWriter
from mode_policy.data.stats import compute_stats
from tests.data.lerobot_fixture import LENGTHS, TASKS, write_lerobot_style_dataset

FEATURES = {
    "observation.state": {"dtype": "float32", "shape": [3], "names": ["x", "y", "z"]},
    "action": {"dtype": "float32", "shape": [2], "names": ["a", "b"]},
}


def write_small(root: Path, lengths=(4, 6, 3), tasks=("push it", "pull it", "push it")) -> dict:
    rng = np.random.default_rng(0)
    out = {"observation.state": [], "action": []}
    with LeRobotDatasetWriter(root, fps=10, features=FEATURES, robot_type="toy") as writer:
        for length, task in zip(lengths, tasks, strict=True):
            for _ in range(length):
                frame = {"observation.state": rng.normal(size=3), "action": rng.normal(size=2)}
                writer.add_frame(frame)
                for k in out:
                    out[k].append(np.asarray(frame[k], np.float32))
            writer.save_episode(task=task)
    return {k: np.stack(v) for k, v in out.items()}


def test_round_trip(tmp_path):
    root = tmp_path / "ds"
    written = write_small(root)
    ds = LeRobotDataset(root)
    assert (ds.num_episodes, ds.num_frames, ds.fps) == (3, 13, 10)
    assert ds.tasks == ["push it", "pull it"]
    np.testing.assert_array_equal(ds.column("observation.state"), written["observation.state"])
    np.testing.assert_array_equal(ds.column("action"), written["action"])
    assert ds.column("action").dtype == np.float32
    np.testing.assert_array_equal(ds.column("task_index"), [0] * 4 + [1] * 6 + [0] * 3)
    np.testing.assert_array_equal(ds.column("frame_index")[4:10], np.arange(6))
    np.testing.assert_allclose(ds.column("timestamp")[4:10], np.arange(6) / 10)
    assert [ep["dataset_from_index"] for ep in ds.episodes] == [0, 4, 10]
    assert [ep["tasks"] for ep in ds.episodes] == [["push it"], ["pull it"], ["push it"]]
    assert ds.info["codebase_version"] == "v3.0" and ds.info["splits"] == {"train": "0:3"}
    assert ds.info["features"]["observation.state"]["names"] == ["x", "y", "z"]
    # stats.json written once at finalize equals stats recomputed from the loaded columns
    recomputed = compute_stats(ds)
    for name in ("observation.state", "action", "index"):
        for stat in ("mean", "std", "min", "max", "count", "q01", "q99"):
            np.testing.assert_allclose(ds.stats[name][stat], recomputed[name][stat], rtol=1e-6)
    assert ds.stats["action"]["mean"].shape == (2,) and ds.stats["index"]["mean"].shape == (1,)
    assert ds.stats["action"]["count"].tolist() == [13]
    # LeRobot's on-disk types: fixed-size float32 lists, scalar index columns, pandas-indexed tasks
    schema = pq.read_schema(root / "data/chunk-000/file-000.parquet")
    assert schema.field("observation.state").type == pa.list_(pa.float32(), 3)
    assert schema.field("index").type == pa.int64() and schema.field("timestamp").type == pa.float32()
    assert b"huggingface" in schema.metadata
    tasks_meta = json.loads(pq.read_schema(root / "meta/tasks.parquet").metadata[b"pandas"])
    assert tasks_meta["index_columns"] == ["task"]
    episodes = pq.read_table(root / "meta/episodes/chunk-000/file-000.parquet")
    assert {"stats/action/mean", "data/chunk_index", "data/file_index", "meta/episodes/chunk_index"} <= set(
        episodes.column_names
    )


@pytest.mark.parametrize("task_index_name", ["task", None])
def test_lerobot_written_dataset_loads_unchanged(tmp_path, task_index_name):
    data = write_lerobot_style_dataset(tmp_path / "lr", task_index_name=task_index_name)
    ds = LeRobotDataset(tmp_path / "lr")
    assert ds.tasks == list(TASKS)
    assert ds.num_frames == sum(LENGTHS) and ds.num_episodes == len(LENGTHS)
    np.testing.assert_array_equal(ds.column("observation.state"), data["observation.state"])
    np.testing.assert_array_equal(ds.column("action"), data["action"])
    assert "observation.images.top" in ds.features  # listed, not loaded
    with pytest.raises(DatasetError, match=r"observation\.images\.top"):
        ds.column("observation.images.top")
    assert ds.stats["observation.state"]["mean"].shape == (6,)
    assert ds.episodes[2]["tasks"] == [TASKS[0]]


def test_variable_length_list_columns_are_accepted(tmp_path):
    root = tmp_path / "ds"
    written = write_small(root)
    path = root / "data/chunk-000/file-000.parquet"
    table = pq.read_table(path)
    # e.g. what pandas.DataFrame.to_parquet writes for a column of arrays: list<double>
    as_list = pa.array(written["observation.state"].astype(np.float64).tolist(), pa.list_(pa.float64()))
    table = table.set_column(table.schema.get_field_index("observation.state"), "observation.state", as_list)
    pq.write_table(table, path)
    np.testing.assert_allclose(LeRobotDataset(root).column("observation.state"), written["observation.state"])


# ----------------------------------------------------------------------------- malformed datasets
def _rewrite(path: Path, edit) -> None:
    table = pq.read_table(path)
    pq.write_table(edit(table), path)


def _edit_info(root: Path, edit) -> None:
    info = json.loads((root / "meta/info.json").read_text())
    edit(info)
    (root / "meta/info.json").write_text(json.dumps(info))


def _replace(table: pa.Table, name: str, array) -> pa.Table:
    return table.set_column(table.schema.get_field_index(name), name, array)


DATA = "data/chunk-000/file-000.parquet"
EPISODES = "meta/episodes/chunk-000/file-000.parquet"


def _nan_action(root):
    def edit(table):
        values = np.stack(table.column("action").to_numpy(zero_copy_only=False)).astype(np.float32)
        values[5, 1] = np.nan
        flat = pa.array(values.reshape(-1), pa.float32())
        return _replace(table, "action", pa.FixedSizeListArray.from_arrays(flat, 2))

    _rewrite(root / DATA, edit)


def _int_action(root):
    def edit(table):
        flat = pa.array(np.zeros(table.num_rows * 2, dtype=np.int64))
        return _replace(table, "action", pa.FixedSizeListArray.from_arrays(flat, 2))

    _rewrite(root / DATA, edit)


def _shifted_episode(root):
    def edit(table):
        frm = table.column("dataset_from_index").to_pylist()
        to = table.column("dataset_to_index").to_pylist()
        frm[1], to[0] = frm[1] + 1, to[0] + 1
        length = table.column("length").to_pylist()
        length[0], length[1] = length[0] + 1, length[1] - 1
        table = _replace(table, "dataset_from_index", pa.array(frm, pa.int64()))
        table = _replace(table, "dataset_to_index", pa.array(to, pa.int64()))
        return _replace(table, "length", pa.array(length, pa.int64()))

    _rewrite(root / EPISODES, edit)


CASES = {
    "missing info.json": (lambda r: (r / "meta/info.json").unlink(), ["meta/info.json", "missing"]),
    "missing data files": (lambda r: (r / DATA).unlink(), ["data", "no data files"]),
    "feature missing from parquet": (
        lambda r: _edit_info(
            r, lambda i: i["features"].update(extra={"dtype": "float32", "shape": [2], "names": None})
        ),
        [DATA, "'extra'", "missing from the parquet"],
    ),
    "wrong dtype": (_int_action, [DATA, "'action'", "dtype 'float32'"]),
    "wrong shape": (
        lambda r: _edit_info(r, lambda i: i["features"]["observation.state"].update(shape=[4])),
        [DATA, "'observation.state'", "shape [4]"],
    ),
    "NaN in action": (_nan_action, [DATA, "'action'", "NaN", "episode 1"]),
    "no episodes": (
        lambda r: _rewrite(r / EPISODES, lambda t: t.slice(0, 0)),
        ["meta/episodes", "no episodes"],
    ),
    "inconsistent episode ranges": (_shifted_episode, [DATA, "'episode_index'", "inconsistent"]),
    "old codebase version": (
        lambda r: _edit_info(r, lambda i: i.update(codebase_version="v2.1")),
        ["meta/info.json", "'codebase_version'", "convert"],
    ),
    "stale total_frames": (
        lambda r: _edit_info(r, lambda i: i.update(total_frames=99)),
        ["meta/info.json", "'total_frames'"],
    ),
    "missing tasks": (lambda r: (r / "meta/tasks.parquet").unlink(), ["meta/tasks.parquet", "missing"]),
}


@pytest.mark.parametrize("case", list(CASES))
def test_malformed_dataset_errors_name_file_and_field(tmp_path, case):
    root = tmp_path / "ds"
    write_small(root)
    corrupt, expected = CASES[case]
    corrupt(root)
    with pytest.raises(DatasetError) as err:
        LeRobotDataset(root)
    for text in expected:
        assert text in str(err.value), (text, str(err.value))


# ----------------------------------------------------------------------------- atomic writes
def test_interrupted_writer_leaves_nothing_loadable(tmp_path):
    root = tmp_path / "ds"
    with pytest.raises(KeyboardInterrupt), LeRobotDatasetWriter(root, 10, FEATURES) as writer:
        for _ in range(3):
            writer.add_frame({"observation.state": np.zeros(3), "action": np.zeros(2)})
        writer.save_episode("task")
        raise KeyboardInterrupt
    assert not root.exists()
    assert list(tmp_path.iterdir()) == []  # the partial folder was cleaned up too

    # A hard crash (no cleanup at all): only a hidden partial folder exists, and root does not load.
    writer = LeRobotDatasetWriter(root, 10, FEATURES)
    writer.add_frame({"observation.state": np.zeros(3), "action": np.zeros(2)})
    writer.save_episode("task")
    assert not root.exists()
    partial = [p for p in tmp_path.iterdir() if p.name.startswith(".ds.partial-")]
    assert len(partial) == 1
    with pytest.raises(DatasetError, match=r"meta/info\.json"):
        LeRobotDataset(partial[0])
    with pytest.raises(DatasetError):
        LeRobotDataset(root)
    writer.finalize()
    assert LeRobotDataset(root).num_episodes == 1
    assert not partial[0].exists()


def test_writer_refuses_existing_dataset_unless_overwrite(tmp_path):
    root = tmp_path / "ds"
    write_small(root)
    with pytest.raises(FileExistsError):
        LeRobotDatasetWriter(root, 10, FEATURES)
    write_small_overwrite = LeRobotDatasetWriter(root, 10, FEATURES, overwrite=True)
    write_small_overwrite.add_frame({"observation.state": np.ones(3), "action": np.ones(2)})
    write_small_overwrite.save_episode("new")
    write_small_overwrite.finalize()
    ds = LeRobotDataset(root)
    assert ds.tasks == ["new"] and ds.num_frames == 1


def test_writer_validates_frames(tmp_path):
    writer = LeRobotDatasetWriter(tmp_path / "ds", 10, FEATURES)
    with pytest.raises(ValueError, match="missing"):
        writer.add_frame({"observation.state": np.zeros(3)})
    with pytest.raises(ValueError, match="shape"):
        writer.add_frame({"observation.state": np.zeros(4), "action": np.zeros(2)})
    with pytest.raises(ValueError, match="at least one frame"):
        writer.save_episode("t")
    writer.add_frame({"observation.state": np.full(3, np.nan), "action": np.zeros(2)})
    with pytest.raises(ValueError, match="NaN"):
        writer.save_episode("t")
    writer.abort()
