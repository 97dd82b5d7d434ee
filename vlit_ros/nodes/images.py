"""
Convert between sensor_msgs images and H x W x 3 uint8 RGB numpy arrays.

Why not cv_bridge: PyPI's `cv-bridge` 1.13.0.post0 (the only cv_bridge wheel) is the ROS 1
Python code, and its `cv2_to_imgmsg` / `cv2_to_compressed_imgmsg` call `ndarray.tostring()`,
which numpy 2 removed (AttributeError). On a full ROS install cv_bridge works, but one code
path for both install routes is simpler to test, so the conversion is plain numpy here.

Only 8-bit encodings are accepted (rgb8, bgr8, rgba8, bgra8, mono8): byte order has no
meaning for them, so `is_bigendian` must merely be a valid flag (0 or 1). Anything malformed
raises `ValueError` with the reason, so callers can log it and drop the frame.
"""

from typing import Optional

from builtin_interfaces.msg import Time
import cv2
import numpy as np
from sensor_msgs.msg import CompressedImage, Image

# encoding -> (channels, cv2 conversion to RGB, or None when the layout already is RGB)
_DECODERS = {
    'rgb8': (3, None),
    'bgr8': (3, cv2.COLOR_BGR2RGB),
    'rgba8': (4, cv2.COLOR_RGBA2RGB),
    'bgra8': (4, cv2.COLOR_BGRA2RGB),
    'mono8': (1, cv2.COLOR_GRAY2RGB),
}
SUPPORTED_ENCODINGS = tuple(_DECODERS)


def image_to_rgb(msg: Image) -> np.ndarray:
    """Return an Image message as a new H x W x 3 uint8 RGB array; ValueError if malformed."""
    encoding = msg.encoding.strip().lower()
    if encoding not in _DECODERS:
        raise ValueError(f'unsupported image encoding {msg.encoding!r}; expected one of '
                         f'{", ".join(SUPPORTED_ENCODINGS)}')
    channels, conversion = _DECODERS[encoding]
    height, width, step = msg.height, msg.width, msg.step
    if height == 0 or width == 0:
        raise ValueError(f'empty image: {width}x{height}')
    if msg.is_bigendian not in (0, 1):
        raise ValueError(f'is_bigendian must be 0 or 1, got {msg.is_bigendian}')
    row_bytes = width * channels
    if step < row_bytes:
        raise ValueError(f'step {step} is smaller than width x channels = {row_bytes} '
                         f'for {width} px of {encoding}')
    data = np.frombuffer(msg.data, dtype=np.uint8)
    if data.size != height * step:
        raise ValueError(f'data has {data.size} bytes, expected height x step = '
                         f'{height} x {step} = {height * step}')
    pixels = data.reshape(height, step)[:, :row_bytes].reshape(height, width, channels)
    if conversion is None:
        # A copy, so the frame never aliases the message buffer.
        return np.array(pixels, order='C')
    return cv2.cvtColor(np.ascontiguousarray(pixels), conversion)


def compressed_to_rgb(msg: CompressedImage) -> np.ndarray:
    """Decode a CompressedImage (JPEG, PNG, ...) to H x W x 3 uint8 RGB; ValueError if bad."""
    data = np.frombuffer(msg.data, dtype=np.uint8)
    if data.size == 0:
        raise ValueError('empty compressed image')
    bgr = cv2.imdecode(data, cv2.IMREAD_COLOR)
    if bgr is None:
        raise ValueError(f'could not decode compressed image (format {msg.format!r}, '
                         f'{data.size} bytes)')
    return cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)


def rgb_to_image(array: np.ndarray, stamp: Optional[Time] = None,
                 frame_id: str = 'camera') -> Image:
    """Return an rgb8 Image message for an H x W x 3 uint8 RGB array."""
    array = np.asarray(array)
    if array.dtype != np.uint8 or array.ndim != 3 or array.shape[2] != 3:
        raise ValueError(f'expected an H x W x 3 uint8 RGB array, got shape {array.shape} '
                         f'of {array.dtype}')
    height, width = array.shape[:2]
    if height == 0 or width == 0:
        raise ValueError(f'empty image: {width}x{height}')
    msg = Image()
    if stamp is not None:
        msg.header.stamp = stamp
    msg.header.frame_id = frame_id
    msg.height = height
    msg.width = width
    msg.encoding = 'rgb8'
    msg.is_bigendian = 0
    msg.step = width * 3
    msg.data = np.ascontiguousarray(array).tobytes()
    return msg
