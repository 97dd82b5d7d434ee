"""Tests for the sensor_msgs image conversions (vlit_ros.nodes.images)."""

from builtin_interfaces.msg import Time
import cv2
import numpy as np
import pytest
from sensor_msgs.msg import CompressedImage, Image

from vlit_ros.nodes.images import compressed_to_rgb, image_to_rgb, rgb_to_image


@pytest.fixture
def rgb():
    return np.random.default_rng(0).integers(0, 256, (96, 128, 3), dtype=np.uint8)


def make_image(pixels, encoding, step=None, padding=0):
    height, width = pixels.shape[:2]
    row = pixels.reshape(height, -1)
    if padding:
        row = np.concatenate([row, np.full((height, padding), 7, np.uint8)], axis=1)
    msg = Image(height=height, width=width, encoding=encoding)
    msg.step = step if step is not None else row.shape[1]
    msg.data = row.tobytes()
    return msg


def test_round_trip_keeps_pixels_stamp_and_frame(rgb):
    stamp = Time(sec=12, nanosec=345)
    msg = rgb_to_image(rgb, stamp=stamp, frame_id='camera_optical')
    assert (msg.height, msg.width, msg.step, msg.encoding) == (96, 128, 384, 'rgb8')
    assert msg.header.stamp == stamp
    assert msg.header.frame_id == 'camera_optical'
    out = image_to_rgb(msg)
    assert out.dtype == np.uint8 and out.shape == (96, 128, 3)
    np.testing.assert_array_equal(out, rgb)


def test_result_does_not_alias_the_message(rgb):
    msg = rgb_to_image(rgb)
    out = image_to_rgb(msg)
    out[:] = 0
    np.testing.assert_array_equal(image_to_rgb(msg), rgb)


@pytest.mark.parametrize('encoding, conversion', [
    ('bgr8', cv2.COLOR_RGB2BGR), ('rgba8', cv2.COLOR_RGB2RGBA), ('bgra8', cv2.COLOR_RGB2BGRA),
])
def test_colour_encodings(rgb, encoding, conversion):
    np.testing.assert_array_equal(image_to_rgb(make_image(cv2.cvtColor(rgb, conversion),
                                                          encoding)), rgb)


def test_mono8_becomes_grey_rgb():
    grey = np.arange(12, dtype=np.uint8).reshape(3, 4)
    out = image_to_rgb(make_image(grey, 'mono8'))
    assert out.shape == (3, 4, 3)
    for channel in range(3):
        np.testing.assert_array_equal(out[:, :, channel], grey)


def test_row_padding_is_skipped(rgb):
    msg = make_image(rgb, 'rgb8', padding=16)
    assert msg.step == 128 * 3 + 16
    out = image_to_rgb(msg)
    np.testing.assert_array_equal(out, rgb)
    assert out.flags.c_contiguous


def test_encoding_names_are_case_insensitive(rgb):
    np.testing.assert_array_equal(image_to_rgb(make_image(rgb, 'RGB8')), rgb)


@pytest.mark.parametrize('encoding', ['yuv422', '16UC1', 'rgb16', '', 'jpeg'])
def test_unsupported_encoding(rgb, encoding):
    with pytest.raises(ValueError, match='unsupported image encoding'):
        image_to_rgb(make_image(rgb, encoding))


def test_step_smaller_than_a_row(rgb):
    with pytest.raises(ValueError, match='step 383 is smaller than width x channels = 384'):
        image_to_rgb(make_image(rgb, 'rgb8', step=383))


def test_data_size_must_match_height_times_step(rgb):
    msg = make_image(rgb, 'rgb8')
    msg.data = msg.data[:-1]
    with pytest.raises(ValueError, match='expected height x step'):
        image_to_rgb(msg)
    msg = make_image(rgb, 'bgr8', step=400)
    with pytest.raises(ValueError, match='96 x 400'):
        image_to_rgb(msg)


def test_zero_sizes():
    with pytest.raises(ValueError, match='empty image'):
        image_to_rgb(Image(height=0, width=4, encoding='rgb8', step=12))
    with pytest.raises(ValueError, match='empty image'):
        image_to_rgb(Image(height=4, width=0, encoding='rgb8', step=0))


def test_is_bigendian_must_be_a_flag(rgb):
    msg = make_image(rgb, 'rgb8')
    msg.is_bigendian = 1
    np.testing.assert_array_equal(image_to_rgb(msg), rgb)
    msg.is_bigendian = 2
    with pytest.raises(ValueError, match='is_bigendian'):
        image_to_rgb(msg)


@pytest.mark.parametrize('array', [
    np.zeros((4, 4), np.uint8), np.zeros((4, 4, 4), np.uint8), np.zeros((4, 4, 3), np.float32),
    np.zeros((0, 4, 3), np.uint8),
])
def test_rgb_to_image_rejects_non_rgb_arrays(array):
    with pytest.raises(ValueError):
        rgb_to_image(array)


def test_compressed_png_round_trip(rgb):
    ok, png = cv2.imencode('.png', cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))
    assert ok
    msg = CompressedImage(format='png')
    msg.data = png.tobytes()
    np.testing.assert_array_equal(compressed_to_rgb(msg), rgb)


def test_compressed_garbage_is_rejected():
    msg = CompressedImage(format='jpeg')
    with pytest.raises(ValueError, match='empty compressed image'):
        compressed_to_rgb(msg)
    msg.data = b'not a jpeg at all'
    with pytest.raises(ValueError, match='could not decode'):
        compressed_to_rgb(msg)


def test_pypi_cv_bridge_would_fail_on_numpy_2():
    # The reason images.py does not use cv_bridge on the pip path (see its docstring).
    assert not hasattr(np.ndarray, 'tostring')
