# Copyright 2026 vlit_ros developers
# Licensed under the Apache License, Version 2.0.

"""
An ensemble of instruction-following checkpoints, as a `vlit-ros eval` policy plug-in.

    export VLIT_ENSEMBLE=CKPT1,CKPT2,CKPT3
    vlit-ros eval --policy bench/ensemble_policy.py:Ensemble --families goto --episodes 200

Every member sees the same frames and acts on them; the ensemble takes the action with the
highest mean probability (`VLIT_ENSEMBLE_MODE=logmean`: the highest mean log-probability)
and tells each member the action taken, since the executor reads its previous action. A
diagnostic: it asks whether independently trained checkpoints fail on different scenes in a
way that averaging their decisions repairs (docs/TRAINING.md, "Twentieth session").
"""

import os
from typing import List, Sequence

import numpy as np

from vlit_ros.core.actions import ACTIONS
from vlit_ros.core.policy import ModelPolicy

MODES = ('mean', 'logmean')


class Ensemble:
    """Mean of the members' action probabilities; members from $VLIT_ENSEMBLE."""

    def __init__(self, checkpoints: Sequence[str] = (), mode: str = ''):
        checkpoints = list(checkpoints) or [
            path for path in os.environ.get('VLIT_ENSEMBLE', '').split(',') if path]
        if len(checkpoints) < 2:
            raise ValueError('an ensemble needs two or more checkpoints '
                             '(VLIT_ENSEMBLE=DIR1,DIR2,...)')
        self.mode = mode or os.environ.get('VLIT_ENSEMBLE_MODE', 'mean')
        if self.mode not in MODES:
            raise ValueError(f'VLIT_ENSEMBLE_MODE must be one of {MODES}, got {self.mode!r}')
        self.members = [ModelPolicy.from_checkpoint(path) for path in checkpoints]

    def reset(self, instruction: str) -> None:
        self.reset_batch([instruction])

    def reset_batch(self, instructions: Sequence[str]) -> None:
        for member in self.members:
            member.reset_batch(instructions)

    def act(self, obs) -> str:
        return self.act_batch([obs])[0]

    def act_batch(self, observations: Sequence) -> List[str]:
        probabilities = []
        for member in self.members:
            member.act_batch(observations)
            probabilities.append(member.last_batch_probabilities)
        stacked = np.stack(probabilities)
        if self.mode == 'logmean':
            score = np.log(np.clip(stacked, 1e-12, None)).mean(axis=0)
        else:
            score = stacked.mean(axis=0)
        chosen = [ACTIONS[int(index)] for index in score.argmax(axis=1)]
        for member in self.members:
            for robot, action in enumerate(chosen):
                member.note_taken_action(action, robot)
        return chosen
