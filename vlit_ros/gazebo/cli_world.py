"""`vlit-ros gz-world`: write the Gazebo SDF world (and its bridge configuration) for a scene."""

import argparse
from pathlib import Path
import sys

from vlit_ros.gazebo.bridge import write_bridge_config
from vlit_ros.gazebo.sdf import write_world
from vlit_ros.sim.scene import RobotSpec, Scene, SHIFT_DESCRIPTION


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Declare the command's options."""
    parser.add_argument('--seed', type=int, default=0, help='scene seed (default 0)')
    parser.add_argument('--scene', default=None, metavar='FILE.yaml',
                        help='read the scene from this YAML file instead of generating it '
                             '(Scene.to_yaml layout)')
    parser.add_argument('--world', choices=('nominal', 'shifted'), default='nominal',
                        help='shifted: ' + SHIFT_DESCRIPTION.replace('%', '%%'))
    parser.add_argument('--out', default='.', metavar='DIR',
                        help='folder for the world and gz_bridge.yaml (default: current)')


def run(args: argparse.Namespace) -> int:
    """Write the files and print their paths and how to start them."""
    if args.scene:
        try:
            scene = Scene.from_yaml(Path(args.scene).read_text())
        except (OSError, ValueError) as exc:
            print(f'vlit-ros gz-world: cannot read scene {args.scene}: {exc}', file=sys.stderr)
            return 2
    else:
        scene = Scene.generate(args.seed)
    if args.world == 'shifted':
        scene = scene.with_robot(RobotSpec().shifted())
    world = write_world(scene, args.out)
    bridge = write_bridge_config(args.out)
    print(f'world:  {world}')
    print(f'bridge: {bridge}')
    print(f'run:    gz sim -r {world}\n'
          f'        ros2 run ros_gz_bridge parameter_bridge --ros-args '
          f'-p config_file:={bridge}')
    return 0
