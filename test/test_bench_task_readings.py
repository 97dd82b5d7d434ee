# Copyright 2026 vlit_ros developers
# Licensed under the Apache License, Version 2.0.

"""bench/task_readings.py: it enumerates what the generator says, and reads real checkpoints."""

import json
import math
import random

from bench_scripts import load_bench_script
import pytest

from vlit_ros.core.model import (ExecutorConfig, FusionConfig, ModelConfig, PretrainConfig,
                                 save_checkpoint, VisionConfig, VLITModel)
from vlit_ros.sim.scene import Scene
from vlit_ros.sim.tasks import generate_instruction, MoveTask, TurnTask


@pytest.fixture(scope='module')
def readings():
    return load_bench_script('task_readings')


def test_every_generated_turn_and_move_instruction_is_enumerated(readings):
    known = {(text, number) for _, text, number in readings.instructions()}
    assert len(known) == len(readings.instructions())
    for seed in range(300):
        scene = Scene.generate(seed)
        rng = random.Random(seed)
        for family in ('turn', 'move'):
            instruction = generate_instruction(scene, family, rng)
            task = instruction.task
            number = task.angle_deg if isinstance(task, TurnTask) else task.distance_m
            assert isinstance(task, (TurnTask, MoveTask))
            assert (instruction.text, number) in known, instruction.text


def test_reads_the_shipped_checkpoint_and_refuses_one_without_a_task_head(readings, tmp_path):
    out = tmp_path / 'readings.json'
    assert readings.main(['--json', str(out), '--worst', '3']) == 0
    result = json.loads(out.read_text())
    assert result['summary']['turn']['instructions'] == 101
    assert result['summary']['move']['instructions'] == 204
    for family in ('turn', 'move'):
        assert math.isfinite(result['summary'][family]['mean_error'])
    assert len(result['worst']) == 3
    config = ModelConfig(vision=VisionConfig(dim=32, depth=1, heads=2),
                         fusion=FusionConfig(dim=32, depth=1, heads=2, task_parameters=False),
                         executor=ExecutorConfig(hidden=32),
                         pretrain=PretrainConfig(mlm_dim=32, mlm_heads=2, itm_hidden=32))
    directory = save_checkpoint(VLITModel(config), tmp_path / 'no_task_head')
    assert readings.main(['--checkpoint', str(directory)]) == 2
