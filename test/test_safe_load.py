"""Reading foreign checkpoint files: no code runs, and every problem names its file and tensor."""
import os
import pickle

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from tinyvla_grpo_ros.core.safe_load import (
    SourceError,
    TensorSource,
    load_numpy_pickle,
    load_tensors,
)


class RunsCode:
    """A pickle that would create a file when loaded (what a malicious stats file does)."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


@pytest.mark.parametrize("protocol", [2, 4, 5])
def test_numpy_stats_load_under_every_pickle_protocol(tmp_path, protocol):
    stats = {"action_min": np.array([-1.0, 0.5], np.float32), "qpos_mean": np.arange(3.0),
             "qpos_std": np.ones(3), "episode_len": [np.int64(5), 7], "name": "x"}
    p = tmp_path / "dataset_stats.pkl"
    p.write_bytes(pickle.dumps(stats, protocol=protocol))
    got = load_numpy_pickle(p)
    assert np.array_equal(got["action_min"], stats["action_min"])
    assert got["action_min"].dtype == np.float32 and got["episode_len"][1] == 7


def test_a_pickle_that_would_run_code_is_refused_before_it_runs(tmp_path):
    marker = tmp_path / "pwned"
    p = tmp_path / "dataset_stats.pkl"
    p.write_bytes(pickle.dumps({"action_min": np.zeros(2), "x": RunsCode(marker)}))
    with pytest.raises(SourceError, match=r"dataset_stats.pkl: refused to load posix.system"):
        load_numpy_pickle(p)
    assert not marker.exists()
    with pytest.raises(SourceError, match="not a readable pickle"):
        (tmp_path / "torn.pkl").write_bytes(pickle.dumps({"a": np.zeros(3)})[:20])
        load_numpy_pickle(tmp_path / "torn.pkl")


def test_bin_files_load_weights_only_and_code_in_them_is_refused(tmp_path):
    torch.save({"w": torch.ones(2, 3)}, tmp_path / "ok.bin")
    assert load_tensors(tmp_path / "ok.bin")["w"].shape == (2, 3)
    marker = tmp_path / "pwned"
    torch.save({"w": torch.ones(1), "x": RunsCode(marker)}, tmp_path / "bad.bin")
    with pytest.raises(SourceError, match=r"bad.bin: cannot be read as tensors"):
        load_tensors(tmp_path / "bad.bin")
    assert not marker.exists()


def test_missing_wrong_shape_nan_and_unaccounted_tensors_are_named(tmp_path):
    save_file({"a.weight": torch.ones(2, 2), "b.bias": torch.tensor([1.0, float("nan")]),
               "c.extra": torch.zeros(1)}, str(tmp_path / "model.safetensors"))
    src = TensorSource().add(tmp_path / "model.safetensors")
    with pytest.raises(SourceError, match=r"model.safetensors: tensor 'a.weight' has shape "
                                          r"\(2, 2\), the model needs \(3, 2\)"):
        src.take("a.weight", (3, 2))
    with pytest.raises(SourceError, match=r"model.safetensors: tensor 'b.bias' is not finite"):
        src.take("b.bias")
    with pytest.raises(SourceError, match=r"model.safetensors: tensor 'z' is missing"):
        src.take("z")
    assert src.take("a.weight", (2, 2)).dtype == torch.float32
    src.ignore("b.bias", "test")
    with pytest.raises(SourceError, match=r"1 source tensors neither used nor known.*c.extra"):
        src.check_all_accounted()
    src.ignore_prefix("c.", "test")
    src.check_all_accounted()
