"""Inputs a decision may use (core/inputs.py) and the hold's target (core/safety.py), no ROS."""
import numpy as np
import pytest

from tinyvla_grpo_ros.core.inputs import Freshness, JointTable, fit_image
from tinyvla_grpo_ros.core.safety import ActionLimits

FRESH = Freshness(stale_after_s=0.5, future_tolerance_s=0.2)


def test_freshness_refuses_old_future_and_silent_inputs_by_name():
    assert FRESH.problem("image_raw", 10.0, 100.0, 10.1, 100.1) == ""
    assert "0.90 s old" in FRESH.problem("image_raw", 10.0, 100.0, 10.9, 100.1)
    future = FRESH.problem("image_raw", 3610.0, 100.0, 10.0, 100.0)     # an hour ahead
    assert "image_raw" in future and "in the future" in future
    assert FRESH.problem("image_raw", 10.15, 100.0, 10.0, 100.0) == ""  # within tolerance
    # a dead driver whose last stamp was in the future: judged by arrival
    silent = FRESH.problem("joint j1", 10.3, 100.0, 10.2, 101.0)
    assert "nothing new on joint j1" in silent


def test_joint_states_of_two_publishers_merge_by_name_each_with_its_own_freshness():
    t = JointTable()
    t.update(["j1", "j2"], [0.1, 0.2], stamp_s=10.0, arrival_s=100.0)     # the arm's driver
    t.update(["gripper"], [0.03], stamp_s=10.0, arrival_s=100.0)           # the gripper's
    state, oldest = t.read(["gripper", "j1", "j2"], FRESH, 10.1, 100.1)
    assert state.tolist() == [0.03, 0.1, 0.2] and oldest == 10.0
    t.update(["j1", "j2"], [0.4, 0.5], stamp_s=10.6, arrival_s=100.6)     # the arm goes on
    problem = t.read(["gripper", "j1", "j2"], FRESH, 10.7, 100.7)
    assert isinstance(problem, str) and "gripper" in problem              # the gripper died
    t.update(["j1"], [9.0], stamp_s=9999.0, arrival_s=100.8)    # a clock an hour ahead...
    t.update(["j1"], [0.6], stamp_s=10.8, arrival_s=100.9)      # ...then fixed: taken again
    assert t.joints["j1"][0] == 0.6
    assert "lacks ['j3']" in t.read(["j3"], FRESH, 10.7, 100.7)
    assert JointTable().read(["j1"], FRESH, 0, 0) == "no joint_states yet"
    t.update(["j2"], [float("nan")], stamp_s=10.7, arrival_s=100.7)
    assert "non-finite" in t.read(["j1", "j2"], FRESH, 10.7, 100.7)
    assert "names" in t.update(["j1"], [1.0, 2.0], 11.0, 101.0)


def test_fit_image_keeps_the_aspect_ratio_by_crop_or_pad():
    img = np.zeros((480, 640, 3), np.uint8)
    img[:, :80] = 255                                   # a white band at the left edge
    crop, pad = fit_image(img, 64, "crop"), fit_image(img, 64, "pad")
    assert crop.shape == pad.shape == (64, 64, 3)
    assert crop[:, 0].max() == 0                        # cropped away (80 < 640-480 / 2)
    assert pad[0].max() == 0 and pad[32, 0].max() > 0   # black bars top/bottom, band kept
    square = np.random.default_rng(0).integers(0, 255, (64, 64, 3), dtype=np.uint8)
    assert np.array_equal(fit_image(square, 64), square)     # the sim's frames: unchanged
    with pytest.raises(ValueError, match="fit"):
        fit_image(img, 64, "stretch")


def test_a_tinyvla_frame_is_prepared_as_llava_does_padded_with_the_mean_resized_bicubic():
    """TinyVLA's eval pads a camera frame square with the CLIP processor's mean colour
    (expand2square), then the processor resizes it with PIL's bicubic; written here as
    transformers does it (the float image turned into PIL's uint8 by truncation)."""
    from PIL import Image

    from tinyvla_grpo_ros.core.config import ModelConfig
    from tinyvla_grpo_ros.core.inputs import image_prep
    mean = (0.48145466, 0.4578275, 0.40821073)
    frame = np.random.default_rng(0).integers(0, 256, (27, 48, 3), dtype=np.uint8)
    square = np.empty((48, 48, 3))
    square[:] = mean
    square[10:37] = frame / 255.0
    ref = np.asarray(Image.fromarray((square * 255).astype(np.uint8)).resize(
        (32, 32), Image.Resampling.BICUBIC, reducing_gap=None))
    cfg = ModelConfig(image_size=32, image_mean=mean, image_std=(0.27, 0.26, 0.28),
                      image_pad="mean", image_resample="bicubic")
    ours = fit_image(frame, 32, "pad", **image_prep(cfg))
    assert np.abs(ours.astype(int) - ref.astype(int)).max() <= 1     # x / 255 * 255 truncates
    assert np.array_equal(ours[0, 0], [122, 116, 104])
    assert image_prep(ModelConfig()) == {"pad_rgb": (0, 0, 0), "resample": "area"}


def test_readings_outside_the_limits_are_named_and_the_hold_never_uses_a_raw_reading():
    lim = ActionLimits(np.array([-1.0, -1.0]), np.array([1.0, 1.0]), 0.05)
    names = ["j1", "j2"]
    assert lim.reading_problem(names, names, np.array([0.5, -0.5])) == ""
    text = lim.reading_problem(names, names, np.array([1e6, 0.0]))
    assert "j1 reads 1e+06 outside [-1, 1]" in text
    assert lim.reading_problem(["ee_dx", "ee_dy"], names, np.array([9.0, 9.0])) == ""
    last_cmd, last_good = np.array([0.2, 0.1]), np.array([0.0, 0.0])
    assert lim.hold_target(last_cmd, last_good).tolist() == [0.2, 0.1]
    assert lim.hold_target(None, last_good).tolist() == [0.0, 0.0]
    assert lim.hold_target(np.array([np.nan, 0.0]), last_good).tolist() == [0.0, 0.0]
    assert lim.hold_target(None, None) is None


def test_a_malformed_joint_state_is_named_by_the_next_decision():
    from builtin_interfaces.msg import Time
    from rclpy.time import Time as RclTime
    from sensor_msgs.msg import JointState

    from tinyvla_grpo_ros.nodes.policy_io import Inputs
    from tinyvla_grpo_ros.nodes.ros_common import numpy_to_image
    lim = ActionLimits(np.array([-1.0]), np.array([1.0]))
    inputs = Inputs(["cam"], ["j1"], FRESH, 8, "crop", ["t"], lim, ["a"])
    inputs.images["cam"] = (numpy_to_image(np.zeros((8, 8, 3), np.uint8), Time(sec=0)), 0.0)
    inputs.on_joints(JointState(name=["j1"], position=[0.1, 0.2]), 0.0)
    assert "1 names and 2 positions" in inputs.for_decision("t", RclTime(), 0.0)
    inputs.on_joints(JointState(name=["j1"], position=[0.1]), 0.0)
    assert not isinstance(inputs.for_decision("t", RclTime(), 0.0), str)
    assert "does not serve" in inputs.for_decision("other", RclTime(), 0.0)


def test_policy_nodes_inputs_prepare_frames_as_the_model_says():
    from builtin_interfaces.msg import Time
    from rclpy.time import Time as RclTime
    from sensor_msgs.msg import JointState

    from tinyvla_grpo_ros.core.config import ModelConfig
    from tinyvla_grpo_ros.nodes.policy_io import Inputs
    from tinyvla_grpo_ros.nodes.ros_common import numpy_to_image
    lim = ActionLimits(np.array([-1.0]), np.array([1.0]))
    cfg = ModelConfig(image_size=16, image_mean=(0.5, 0.25, 1.0), image_std=(1.0, 1.0, 1.0),
                      image_pad="mean", image_resample="bicubic")
    for model_cfg, corner in ((None, [0, 0, 0]), (cfg, [127, 63, 255])):
        inputs = Inputs(["cam"], ["j1"], FRESH, 16, "pad", ["t"], lim, ["a"], model_cfg)
        inputs.on_image("cam", numpy_to_image(np.full((8, 16, 3), 9, np.uint8), Time(sec=0)),
                        0.0)
        inputs.on_joints(JointState(name=["j1"], position=[0.1]), 0.0)
        obs = inputs.for_decision("t", RclTime(), 0.0)
        assert obs.images.shape == (1, 16, 16, 3) and obs.images[0, 0, 0].tolist() == corner
        assert obs.images[0, 8, 8].tolist() == [9, 9, 9]
