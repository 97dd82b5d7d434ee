"""
Instruction phrasings for training, and the unseen ones kept for measuring generalisation.

Training uses the built-in phrasings of `vlit_ros.sim.tasks`. Goto phrasings never used in
training are `GOTO_HELD_OUT_TEMPLATES` plus `NEW_UNSEEN_GOTO_TEMPLATES` below; together they
make `test/data/goto_unseen.jsonl` (`unseen_goto_instructions`), and a test checks that no
training text uses them.
"""

import random
import re
from typing import Iterable, List, Optional, Sequence, Tuple

import numpy as np

from vlit_ros.core.model.hf import load_tokenizer, minilm_directory
from vlit_ros.sim.scene import Scene
from vlit_ros.sim.tasks import (COLOR_WORDS, DISTANCE_WORDS, generate_instruction,
                                GOTO_HELD_OUT_TEMPLATES, GOTO_TEMPLATES, Instruction,
                                MOVE_BACKWARD_TEMPLATES, MOVE_FORWARD_TEMPLATES,
                                referring_expressions, SHAPE_WORDS, STOP_PHRASES,
                                TURN_DEGREE_TEMPLATES, TURN_DEGREES, TURN_NAMED)

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


# Goto phrasings used only to rephrase training instructions (`GotoParaphraser`). None uses a
# word of the unseen phrasings that the training phrasings do not already use (a test checks).
PARAPHRASE_GOTO_TEMPLATES: Tuple[str, ...] = (
    'head for the {ref}', 'drive toward the {ref}', 'walk to the {ref}', 'move over to the {ref}',
    'go and stand in front of the {ref}', 'locate the {ref} and go there', 'search for the {ref}',
    'look for the {ref} and drive to it', 'go right to the {ref}', 'hey, go to the {ref}',
    'okay head to the {ref}', 'please drive to the {ref}', 'would you go to the {ref}',
    'go to where the {ref} is', 'stop in front of the {ref}', 'stop when you reach the {ref}',
    'go close to the {ref}', 'come to the {ref}', 'come over to the {ref}', 'visit the {ref}',
    'go find the {ref}', 'drive over to the {ref} and stop', 'move toward the {ref}',
    'head toward the {ref}', 'would you like to go to the {ref}', 'let us go to the {ref}',
    'lets head to the {ref}', 'go to the {ref} please', 'navigate over to the {ref}',
    'go to that {ref}', 'can you find the {ref}', 'drive to the {ref} and wait there',
    'approach the {ref} and halt', 'go to the {ref} and stay', 'head on to the {ref}',
    'move close to the {ref}', 'take me to the {ref}', 'uh head to the {ref}', '{ref} please',
    'go to the {ref} quickly', 'go to the {ref}, thanks', 'find and approach the {ref}',
    'drive to the {ref} then stop', 'the {ref} is where you should go', 'go near that {ref}',
)
# Shapes of the random-word phrasings (`GotoParaphraser`); {w} is a random vocabulary word.
RANDOM_WORD_GOTO_TEMPLATES: Tuple[str, ...] = (
    '{w} to the {ref}', '{w} {w} the {ref}', '{w} the {ref}', '{w} {w} to the {ref}',
    'go to the {ref} {w}', '{w} the {ref} {w}', '{w} {w} {w} the {ref}', 'the {ref} {w}',
    'go {w} the {ref}', '{w} go to the {ref}',
)
# Words a random-word phrasing never uses: colours and shapes could name another object. The
# scene's words (`COLOR_WORDS`, `SHAPE_WORDS`, the nouns of `referring_expressions`) and
# other common colour and shape names.
_COLOUR_AND_SHAPE_WORDS = frozenset(
    [w for words in (*COLOR_WORDS.values(), *SHAPE_WORDS.values()) for w in words] +
    'one thing pink brown black white grey gray cyan magenta gold silver teal cone square '
    'circle round tube'.split())


def phrasing_words(templates: Iterable[str]) -> set:
    """Return the words of phrasings, lower case, without their {placeholders}."""
    return {word for template in templates
            for word in re.sub(r"\{\w+\}|[,']", ' ', template.lower()).split()}


def goto_reference(text: str) -> Optional[str]:
    """
    Return the referring expression of a training goto instruction, or None.

    The most specific training template that `text` fills wins ("go to the {ref} now" over
    "go to the {ref}" over "the {ref}").
    """
    matches = [t for t in GOTO_TEMPLATES if uses_template(text, t)]
    if not matches:
        return None
    template = max(matches, key=len)
    prefix, _, suffix = template.partition('{ref}')
    return text[len(prefix):len(text) - len(suffix)]


class GotoParaphraser:
    """
    Rephrases training goto instructions so the text side learns to read the object's name.

    A training goto instruction keeps its referring expression and gets another phrasing:
    half of the time one of `PARAPHRASE_GOTO_TEMPLATES`, otherwise one of
    `RANDOM_WORD_GOTO_TEMPLATES` filled with words drawn from `vocabulary` (the text
    encoder's whole words), so that words the encoder never learnt do not move the robot.
    The vocabulary leaves out colour and shape words, every word of the other families'
    training phrasings (they ask to turn, drive or stop) and every word of the unseen
    phrasings, which stay unseen, each with whatever ending ("stops", "balls").
    """

    def __init__(self, vocabulary: Sequence[str]):
        excluded = set(_COLOUR_AND_SHAPE_WORDS) | phrasing_words(UNSEEN_GOTO_TEMPLATES)
        excluded |= other_family_words()
        # Words of three letters or more are also left out with their endings ("stops").
        stems = tuple(w for w in excluded if len(w) >= 3)
        self.words = sorted({w for w in vocabulary
                             if w.isascii() and w.isalpha() and w.islower() and
                             3 <= len(w) <= 10 and w not in excluded and
                             not w.startswith(stems)})
        if not self.words:
            raise ValueError('the paraphrasing vocabulary has no usable word')

    def __call__(self, text: str, rng: np.random.Generator) -> str:
        """Return `text` rephrased if it is a training goto instruction, else unchanged."""
        ref = goto_reference(text)
        if ref is None:
            return text
        if rng.random() < 0.5:
            template = PARAPHRASE_GOTO_TEMPLATES[rng.integers(len(PARAPHRASE_GOTO_TEMPLATES))]
            return template.format(ref=ref)
        template = RANDOM_WORD_GOTO_TEMPLATES[rng.integers(len(RANDOM_WORD_GOTO_TEMPLATES))]
        parts = template.split('{w}')
        words = [self.words[i] for i in rng.integers(len(self.words), size=len(parts) - 1)]
        filled = parts[0] + ''.join(w + part for w, part in zip(words, parts[1:]))
        return filled.format(ref=ref)


def other_family_words() -> set:
    """Every word of the turn, move and stop training phrasings."""
    phrases = [p for p, _ in TURN_NAMED] + list(TURN_DEGREE_TEMPLATES) + \
        list(MOVE_FORWARD_TEMPLATES) + list(MOVE_BACKWARD_TEMPLATES) + list(STOP_PHRASES) + \
        [w for words in DISTANCE_WORDS.values() for w in words] + \
        ['left right'] + [str(n) for n in TURN_DEGREES]
    return phrasing_words(phrases)


def tokenizer_words() -> List[str]:
    """Return the whole words of the text encoders' WordPiece vocabulary (MiniLM's)."""
    return list(load_tokenizer(minilm_directory()).get_vocab())
