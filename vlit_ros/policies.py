"""
Policy plug-ins: load `model`, `expert`, `random` or `PATH.py:Class` by name.

A plug-in is a class constructed with no arguments, with `reset(instruction: str)` and
`act(obs) -> str` returning one of the seven action names (DESIGN.md §5).
"""

import importlib.util
from pathlib import Path
import random
import sys
from typing import Optional

from vlit_ros.core.actions import ACTIONS

BUILTIN_POLICIES = ('model', 'expert', 'random')


class RandomPolicy:
    """Uniformly random actions; the lower bound in evaluations."""

    def __init__(self, seed: Optional[int] = None):
        self._rng = random.Random(seed)

    def reset(self, instruction: str) -> None:
        if not instruction.strip():
            raise ValueError('empty instruction')

    def act(self, obs) -> str:
        return self._rng.choice(ACTIONS)


def load_plugin(spec: str):
    """Instantiate `PATH.py:Class`, checking it has the plug-in interface."""
    path_text, sep, class_name = spec.rpartition(':')
    if not sep or not path_text.endswith('.py') or not class_name:
        raise ValueError(f'policy plug-in must be PATH.py:Class, got {spec!r}')
    path = Path(path_text).expanduser().resolve()
    if not path.is_file():
        raise ValueError(f'policy plug-in file not found: {path}')
    module_name = f'vlit_policy_plugin_{abs(hash(str(path)))}'
    module_spec = importlib.util.spec_from_file_location(module_name, path)
    module = importlib.util.module_from_spec(module_spec)
    sys.modules[module_name] = module
    try:
        module_spec.loader.exec_module(module)
    except Exception as exc:
        raise ValueError(f'could not import policy plug-in {path}: {exc!r}') from exc
    cls = getattr(module, class_name, None)
    if cls is None:
        raise ValueError(f'{path} defines no {class_name!r}')
    try:
        policy = cls()
    except TypeError as exc:
        raise ValueError(f'{class_name} must be constructible with no arguments: {exc}') from exc
    for method in ('reset', 'act'):
        if not callable(getattr(policy, method, None)):
            raise ValueError(f'{class_name} has no {method}() method; a policy plug-in needs '
                             f'reset(instruction) and act(obs)')
    return policy


def default_checkpoint() -> str:
    """Return the shipped default checkpoint directory, or raise if it is not installed."""
    from vlit_ros.checkpoints import DEFAULT_CHECKPOINT
    if not (DEFAULT_CHECKPOINT / 'config.json').is_file():
        raise ValueError(f'no checkpoint given and the default checkpoint is missing from '
                         f'{DEFAULT_CHECKPOINT}; pass --checkpoint DIR or reproduce it with '
                         f'`vlit-ros train-all --out runs/default --install '
                         f'{DEFAULT_CHECKPOINT}`')
    return str(DEFAULT_CHECKPOINT)


def load_grounding_model(checkpoint: Optional[str] = None):
    """
    Return (model in eval mode, its directory) of a checkpoint with a grounding map.

    The shipped checkpoint when none is given; a ValueError when the checkpoint is not a
    fine-tuned VLITModel with a grounding head (the map's probes need one).
    """
    from vlit_ros.core.model import load_checkpoint, VLITModel
    checkpoint = checkpoint or default_checkpoint()
    model = load_checkpoint(checkpoint).eval()
    if not isinstance(model, VLITModel) or model.vlm.fusion.grounding is None:
        raise ValueError(f'{checkpoint} has no grounding map (a fine-tuned VLITModel has one)')
    return model, str(checkpoint)


def load_policy(spec: str, checkpoint: Optional[str] = None, device: str = 'cpu',
                seed: Optional[int] = None, temperature: Optional[float] = None,
                sample_seed: Optional[int] = None, zoom_map: bool = False):
    """
    Return a policy object for a `--policy` value.

    `temperature` makes the model policy sample (seeded by `sample_seed`) instead of acting
    greedily; it is an error for any other policy, and so is `zoom_map` (the model's
    grounding map merged with a 2x zoom of the image centre).
    """
    if temperature is not None and spec != 'model':
        raise ValueError(f'a temperature applies to the model policy only, not {spec!r}')
    if zoom_map and spec != 'model':
        raise ValueError(f'the zoomed map applies to the model policy only, not {spec!r}')
    if spec == 'expert':
        from vlit_ros.sim.expert import ExpertPolicy
        return ExpertPolicy()
    if spec == 'random':
        return RandomPolicy(seed)
    if spec == 'model':
        from vlit_ros.core.policy import ModelPolicy
        sampling = {} if temperature is None else \
            {'greedy': False, 'temperature': temperature, 'seed': sample_seed}
        return ModelPolicy.from_checkpoint(checkpoint or default_checkpoint(), device=device,
                                           zoom_map=zoom_map, **sampling)
    if ':' in spec:
        return load_plugin(spec)
    raise ValueError(f'unknown policy {spec!r}; use one of {", ".join(BUILTIN_POLICIES)} '
                     f'or PATH.py:Class')
