"""Episode videos: the camera view beside a top-down view, instruction and action overlaid."""

import math
from pathlib import Path
from typing import List, Optional

import cv2
import imageio.v2 as imageio
import numpy as np

from vlit_ros.sim import mjcf

_CAMERA_SCALE = 3
_TOP_SIZE = 288
_BANNER = 44
_FPS = 10


def world_to_top_pixel(x: float, y: float, arena_size: float, size: int) -> tuple:
    """Map a world point to a pixel of the top-down view rendered by `World.render_top`."""
    height = arena_size * mjcf.TOP_CAMERA_HEIGHT_FACTOR
    half_extent = height * math.tan(math.radians(mjcf.TOP_CAMERA_FOVY_DEG / 2.0))
    u = (x / half_extent + 1.0) / 2.0 * size
    v = (1.0 - (y / half_extent + 1.0) / 2.0) * size
    return int(round(u)), int(round(v))


def compose_frame(camera: np.ndarray, top: np.ndarray, instruction: str, action: str,
                  t: float, status: str = '', target_xy: Optional[tuple] = None,
                  trail: Optional[List[tuple]] = None, arena_size: float = 8.0) -> np.ndarray:
    """Return one RGB video frame: camera (scaled) | top-down view, text banner above."""
    cam = cv2.resize(camera, (camera.shape[1] * _CAMERA_SCALE, camera.shape[0] * _CAMERA_SCALE),
                     interpolation=cv2.INTER_NEAREST)
    top = np.ascontiguousarray(cv2.resize(top, (_TOP_SIZE, _TOP_SIZE)))
    if trail and len(trail) > 1:
        pts = np.array([world_to_top_pixel(x, y, arena_size, _TOP_SIZE) for x, y in trail],
                       dtype=np.int32)
        cv2.polylines(top, [pts], False, (255, 255, 255), 1, cv2.LINE_AA)
    if target_xy is not None:
        cv2.circle(top, world_to_top_pixel(*target_xy, arena_size, _TOP_SIZE),
                   int(0.7 / arena_size * _TOP_SIZE * 0.97), (255, 255, 255), 1, cv2.LINE_AA)
    height = max(cam.shape[0], top.shape[0])
    canvas = np.full((height + _BANNER, cam.shape[1] + top.shape[1], 3), 24, np.uint8)
    canvas[_BANNER:_BANNER + cam.shape[0], :cam.shape[1]] = cam
    canvas[_BANNER:_BANNER + top.shape[0], cam.shape[1]:] = top
    font = cv2.FONT_HERSHEY_SIMPLEX
    cv2.putText(canvas, f'"{instruction}"', (8, 18), font, 0.5, (255, 255, 255), 1, cv2.LINE_AA)
    cv2.putText(canvas, f't={t:5.1f}s  action: {action}  {status}', (8, 37), font, 0.45,
                (120, 230, 120), 1, cv2.LINE_AA)
    return canvas


class EpisodeVideo:
    """Collects frames of one episode and writes an H.264 MP4."""

    def __init__(self, path: Path):
        self.path = Path(path)
        self.frames: List[np.ndarray] = []

    def add(self, frame: np.ndarray) -> None:
        self.frames.append(frame)

    def write(self) -> Path:
        if not self.frames:
            raise ValueError(f'no frames to write to {self.path}')
        self.path.parent.mkdir(parents=True, exist_ok=True)
        # H.264 needs even dimensions; yuv420p keeps the file playable everywhere.
        h, w = self.frames[0].shape[:2]
        frames = [f[:h - h % 2, :w - w % 2] for f in self.frames]
        imageio.mimwrite(self.path, frames, fps=_FPS, codec='libx264', quality=7,
                         macro_block_size=1, pixelformat='yuv420p')
        return self.path
