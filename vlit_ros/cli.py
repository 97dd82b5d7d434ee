"""
The `vlit-ros` command: one entry point, a sub-command per module.

Each sub-command lives in its own module, which provides `add_arguments(parser)` and
`run(args) -> int`. Modules are imported only when their sub-command runs, so
`vlit-ros --help` stays fast and a missing optional dependency breaks only its own command.
"""

import argparse
import importlib
import sys
from typing import List, Optional

# (sub-command, module, one-line help)
COMMANDS = (
    ('bench', 'vlit_ros.bench', 'time each model stage at batch 1 and a larger batch'),
    ('demo', 'vlit_ros.demo', 'the whole loop over ROS 2: simulator, task and follower'),
    ('eval', 'vlit_ros.evaluation', 'evaluate a policy on simulated episodes'),
    ('gen-data', 'vlit_ros.training.datagen', 'render captioned views and expert trajectories'),
    ('pretrain', 'vlit_ros.training.pretrain', 'vision-language pretraining (MLM + ITM + VLM)'),
    ('finetune', 'vlit_ros.training.finetune', 'instruction tuning by imitation, then DAgger'),
    ('train-all', 'vlit_ros.training.train_all', 'gen-data, pretrain and finetune in one go'),
    ('eval-table', 'vlit_ros.training.eval_table', 'results table: model, expert, random, ...'),
    ('gz-world', 'vlit_ros.gazebo.cli_world', 'write the Gazebo SDF world for a scene seed'),
    ('run', 'vlit_ros.run', 'bring the node graph up over ROS 2 without ros2 launch'),
    ('feedback', 'vlit_ros.feedback',
     'teach the robot from the keyboard: +1 / -1 rewards and stop'),
)


def main(argv: Optional[List[str]] = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if not argv or argv[0] in ('-h', '--help'):
        # Listing the commands must not import torch or mujoco.
        print('usage: vlit-ros COMMAND [options]\n\ncommands:')
        for name, _, help_text in COMMANDS:
            print(f'  {name:<12} {help_text}')
        print('\nRun `vlit-ros COMMAND --help` for the options of one command.')
        return 0 if argv else 2
    known = {name: module for name, module, _ in COMMANDS}
    if argv[0] not in known:
        print(f'vlit-ros: unknown command {argv[0]!r}; known: {", ".join(known)}',
              file=sys.stderr)
        return 2
    name = argv[0]
    module = importlib.import_module(known[name])
    parser = argparse.ArgumentParser(prog=f'vlit-ros {name}',
                                     description={n: h for n, _, h in COMMANDS}[name])
    module.add_arguments(parser)
    args = parser.parse_args(argv[1:])
    try:
        return int(module.run(args) or 0)
    except KeyboardInterrupt:
        print('interrupted', file=sys.stderr)
        return 130


if __name__ == '__main__':
    sys.exit(main())
