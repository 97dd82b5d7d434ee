"""
Instruction phrasings for training, and the unseen ones kept for measuring generalisation.

Training uses the built-in phrasings of `vlit_ros.sim.tasks`. Goto phrasings never used in
training are `GOTO_HELD_OUT_TEMPLATES` plus `NEW_UNSEEN_GOTO_TEMPLATES` below; together they
make `test/data/goto_unseen.jsonl` (`unseen_goto_instructions`), and a test checks that no
training text uses them.
"""

import random
from typing import List, Tuple

from vlit_ros.sim.scene import Scene
from vlit_ros.sim.tasks import (generate_instruction, GOTO_HELD_OUT_TEMPLATES, Instruction,
                                referring_expressions)

# Goto phrasings of our own that appear in no training data either.
NEW_UNSEEN_GOTO_TEMPLATES: Tuple[str, ...] = (
    'i want you at the {ref}', 'roll up to the {ref}', 'get yourself to the {ref}',
    'steer toward the {ref} and park there', 'bring the robot to the {ref}',
    'off you go to the {ref}', 'drive on over to the {ref}', 'park next to the {ref}',
)
UNSEEN_GOTO_TEMPLATES: Tuple[str, ...] = GOTO_HELD_OUT_TEMPLATES + NEW_UNSEEN_GOTO_TEMPLATES
# `test/data/goto_unseen.jsonl` is built for `vlit-ros eval --seed UNSEEN_GOTO_SEED`: line i
# names an object of scene UNSEEN_GOTO_SEED + i.
UNSEEN_GOTO_SEED = 500_000
UNSEEN_GOTO_LINES = 200


def training_instruction(scene: Scene, family: str, rng: random.Random) -> Instruction:
    """Draw a training instruction of one family that is feasible in `scene`."""
    return generate_instruction(scene, family, rng, held_out=False)


def unseen_goto_instructions(seed: int = UNSEEN_GOTO_SEED,
                             count: int = UNSEEN_GOTO_LINES) -> List[Instruction]:
    """
    Build goto instructions in unseen phrasings; line i names an object of scene seed + i.

    Templates cycle so each unseen phrasing is used equally often.
    """
    instructions = []
    for index in range(count):
        scene = Scene.generate(seed + index)
        rng = random.Random(seed + index)
        target = scene.objects[rng.randrange(len(scene.objects))]
        ref, task = rng.choice(referring_expressions(target, scene))
        template = UNSEEN_GOTO_TEMPLATES[index % len(UNSEEN_GOTO_TEMPLATES)]
        instructions.append(Instruction(template.format(ref=ref), task))
    return instructions


def uses_template(text: str, template: str) -> bool:
    """Return whether `text` is `template` with some referring expression filled in."""
    prefix, _, suffix = template.partition('{ref}')
    return text.startswith(prefix) and text.endswith(suffix) and \
        len(text) > len(prefix) + len(suffix)
