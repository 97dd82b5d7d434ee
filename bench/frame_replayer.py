"""
Publish recorded or synthetic camera frames on camera/image_raw at a fixed rate.

Each frame's header.stamp is the node clock at publish time, so a subscriber downstream can
measure frame -> command latency by stamp. Frames come from `--frames FILE.npz` (an
N x H x W x 3 uint8 RGB array, the first array in the file) or are synthetic: a gradient with
coloured squares moving a little every frame, 128 x 96 by default.

    python bench/frame_replayer.py --rate 10 --count 50 [--ros-args -r __ns:=/robot1]
"""

import argparse
import sys
import time

import numpy as np
import rclpy
from rclpy.node import Node
from rclpy.utilities import remove_ros_args
from sensor_msgs.msg import Image

from vlit_ros.nodes.images import rgb_to_image
from vlit_ros.qos import IMAGE_QOS


def synthetic_frames(count: int, width: int, height: int) -> np.ndarray:
    """Return `count` RGB frames: a fixed gradient with squares drifting across it."""
    ys, xs = np.mgrid[0:height, 0:width]
    base = np.stack([xs * 255 // max(width - 1, 1), ys * 255 // max(height - 1, 1),
                     np.full_like(xs, 96)], axis=-1).astype(np.uint8)
    frames = np.repeat(base[None], count, axis=0)
    size = max(4, height // 6)
    colours = ((230, 40, 40), (40, 200, 60), (50, 80, 230))
    for i in range(count):
        for k, colour in enumerate(colours):
            x = (i * (k + 1) * 2 + k * width // 3) % (width - size)
            y = (height // 2 + (k - 1) * size * 2) % (height - size)
            frames[i, y:y + size, x:x + size] = colour
    return frames


def load_frames(path: str) -> np.ndarray:
    """Return the first array of an .npz file, checked to be N x H x W x 3 uint8."""
    with np.load(path) as data:
        if not data.files:
            raise ValueError(f'{path} holds no arrays')
        frames = data[data.files[0]]
    if frames.ndim != 4 or frames.shape[3] != 3 or frames.dtype != np.uint8 or \
            len(frames) == 0:
        raise ValueError(f'{path}: expected N x H x W x 3 uint8 frames, got {frames.shape} '
                         f'{frames.dtype}')
    return frames


def parse_args(argv):
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0].strip())
    parser.add_argument('--rate', type=float, default=10.0, help='frames per second')
    parser.add_argument('--count', type=int, default=0,
                        help='frames to publish, then exit (0: until interrupted)')
    parser.add_argument('--frames', help='.npz with N x H x W x 3 uint8 RGB frames')
    parser.add_argument('--width', type=int, default=128, help='synthetic frame width')
    parser.add_argument('--height', type=int, default=96, help='synthetic frame height')
    parser.add_argument('--subscribers', type=int, default=1,
                        help='subscribers to wait for before publishing')
    parser.add_argument('--wait-subscribers', type=float, default=10.0,
                        help='seconds to wait for them at most')
    args = parser.parse_args(argv)
    if args.rate <= 0.0 or args.count < 0 or args.subscribers < 0 or args.width < 8 or \
            args.height < 8:
        parser.error('need --rate > 0, --count >= 0, --subscribers >= 0 and frames of at '
                     'least 8 x 8')
    return args


def main(argv=None) -> int:
    """Publish frames until --count is reached or the process is interrupted."""
    argv = sys.argv if argv is None else argv
    args = parse_args(remove_ros_args(argv)[1:])
    frames = load_frames(args.frames) if args.frames else \
        synthetic_frames(64, args.width, args.height)
    rclpy.init(args=argv)
    node = Node('frame_replayer')
    publisher = node.create_publisher(Image, 'camera/image_raw', IMAGE_QOS)
    deadline = time.monotonic() + args.wait_subscribers
    while publisher.get_subscription_count() < args.subscribers and \
            time.monotonic() < deadline:
        time.sleep(0.05)
    period = 1.0 / args.rate
    published = 0
    next_time = time.monotonic()
    try:
        while args.count == 0 or published < args.count:
            msg = rgb_to_image(frames[published % len(frames)],
                               stamp=node.get_clock().now().to_msg())
            publisher.publish(msg)
            published += 1
            next_time += period
            time.sleep(max(0.0, next_time - time.monotonic()))
    except KeyboardInterrupt:
        pass
    finally:
        node.get_logger().info(f'published {published} frames')
        node.destroy_node()
        rclpy.try_shutdown()
    return 0


if __name__ == '__main__':
    sys.exit(main())
