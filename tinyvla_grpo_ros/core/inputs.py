"""What a decision may use: fresh inputs, joint states merged by name, frames fitted to the model.

Freshness is judged twice: by the stamp (the driver's clock) and by the arrival time (this
process's monotonic clock). A stamp older than `stale_after_s`, a stamp in the future beyond
`future_tolerance_s` (an unsynchronized clock), or a message that arrived longer than
`stale_after_s` ago (a driver that died, whatever its last stamp said) each stop commands,
with a problem string naming the input.

`JointTable` keeps the latest reading of every joint by name, from any number of publishers
(an arm and a gripper driver publishing `joint_states` separately); each joint has its own
freshness. `fit_image` makes a camera frame square the way the SFT data were (center crop, or
pad, with black or with the model's mean colour as LLaVA's expand2square) and resizes it to the
model's input size (area filter, or PIL's bicubic as CLIP's processor), so what is decided on,
stored and learned from does not depend on the camera's resolution.
"""
from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np


@dataclass(frozen=True)
class Freshness:
    stale_after_s: float
    future_tolerance_s: float

    def problem(self, what: str, stamp_s: float, arrival_s: float, now_s: float,
                now_arrival_s: float) -> str:
        """"" when the input is fresh, else why not."""
        silent = now_arrival_s - arrival_s
        if silent > self.stale_after_s:
            return f"stale inputs: nothing new on {what} for {silent:.2f} s (driver down?)"
        age = now_s - stamp_s
        if age < -self.future_tolerance_s:
            return (f"{what} is stamped {-age:.2f} s in the future (clocks not synchronized?; "
                    f"tolerance {self.future_tolerance_s} s)")
        if age > self.stale_after_s:
            return f"stale inputs: {what} is {age:.2f} s old"
        return ""


class JointTable:
    """The newest reading of each joint, by name, across publishers."""

    def __init__(self) -> None:
        self.joints: dict[str, tuple[float, float, float]] = {}   # name -> (pos, stamp, arrival)

    def update(self, names, positions, stamp_s: float, arrival_s: float) -> str:
        """Take one JointState; "" or the problem with the message (it is then ignored)."""
        names, positions = list(names), list(positions)
        if len(names) != len(positions):
            return f"joint_states with {len(names)} names and {len(positions)} positions"
        for n, p in zip(names, positions):      # the newest to arrive: a stamp may be wrong
            self.joints[n] = (float(p), stamp_s, arrival_s)
        return ""

    def read(self, joint_names: list[str], fresh: Freshness, now_s: float,
             now_arrival_s: float) -> tuple[np.ndarray, float] | str:
        """(positions in `joint_names` order, oldest stamp) or the problem."""
        missing = [j for j in joint_names if j not in self.joints]
        if missing:
            return f"joint_states lacks {missing}" if self.joints else "no joint_states yet"
        rows = [self.joints[j] for j in joint_names]
        state = np.array([r[0] for r in rows], np.float64)
        bad = {j: v for j, v in zip(joint_names, state) if not np.isfinite(v)}
        if bad:
            return f"non-finite joint positions {bad}"
        for j, (_, stamp, arrival) in zip(joint_names, rows):
            problem = fresh.problem(f"joint {j}", stamp, arrival, now_s, now_arrival_s)
            if problem:
                return problem
        return state, min(r[1] for r in rows)


FITS = ("crop", "pad")


def fit_image(img: np.ndarray, size: int, fit: str = "crop", pad_rgb: tuple[int, ...] = (0, 0, 0),
              resample: str = "area") -> np.ndarray:
    """(H, W, 3) uint8 -> (size, size, 3) uint8: center-crop (or pad with `pad_rgb`) to a
    square, then resize: "area" (area filter when shrinking, linear when enlarging) or
    "bicubic" (PIL's). A square frame of the right size is returned as is."""
    if fit not in FITS:
        raise ValueError(f"image fit must be one of {FITS}, got {fit!r}")
    h, w = img.shape[:2]
    if h != w:
        if fit == "crop":
            s = min(h, w)
            top, left = (h - s) // 2, (w - s) // 2
            img = img[top:top + s, left:left + s]
        else:
            s = max(h, w)
            out = np.empty((s, s, 3), np.uint8)
            out[:] = np.asarray(pad_rgb, np.uint8)
            top, left = (s - h) // 2, (s - w) // 2
            out[top:top + h, left:left + w] = img
            img = out
    if img.shape[0] != size and resample == "bicubic":
        from PIL import Image
        img = np.asarray(Image.fromarray(np.ascontiguousarray(img)).resize(
            (size, size), Image.Resampling.BICUBIC, reducing_gap=None))
    elif img.shape[0] != size:
        interp = cv2.INTER_AREA if img.shape[0] > size else cv2.INTER_LINEAR
        img = cv2.resize(img, (size, size), interpolation=interp)
    return np.ascontiguousarray(img)


def image_prep(cfg) -> dict:
    """fit_image's pad colour and filter for a model (core/config.ModelConfig): its mean colour
    as uint8 (truncated, as transformers turns a float image into PIL's) when it pads so."""
    pad = tuple(int(m * 255) for m in cfg.image_mean) if cfg.image_pad == "mean" and \
        cfg.image_mean else (0, 0, 0)
    return {"pad_rgb": pad, "resample": cfg.image_resample}


def thumbnail_jpeg(img: np.ndarray, px: int = 192, quality: int = 80) -> bytes:
    """(H, W, 3) RGB -> a JPEG of at most `px` a side: the panel's thumbnail, a few kB
    whatever the camera's resolution."""
    scale = px / max(img.shape[:2])
    if scale < 1:
        img = cv2.resize(img, None, fx=scale, fy=scale, interpolation=cv2.INTER_AREA)
    ok, jpeg = cv2.imencode(".jpg", np.ascontiguousarray(img[..., ::-1]),
                            [cv2.IMWRITE_JPEG_QUALITY, quality])
    if not ok:
        raise ValueError(f"cannot encode a {img.shape} image as JPEG")
    return jpeg.tobytes()
