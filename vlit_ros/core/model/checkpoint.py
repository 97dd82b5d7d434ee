"""
Checkpoints: a directory with `config.json` and `model.safetensors`; never a pickle.

`config.json` holds the layout version, the architecture (`VLITModel` or
`PretrainingModel`), the model config and the SHA-256 of `model.safetensors`, so a weights
file from another save (or a truncated one) is caught before it is parsed. Frozen encoders
named by the config (all-MiniLM-L6-v2 by package name, a frozen CLIP/SigLIP tower by
directory) are not copied into the weights.

Both files are written atomically (temporary file in the same directory, fsync,
os.replace); weights first, then the config that vouches for them. Loading validates keys,
shapes, dtypes and finiteness against the architecture the config builds, and every problem
is a `CheckpointError` (a ValueError) that says what is wrong with which file.

The same weights layout travels as bytes (`weights_to_bytes` / `load_weights_from_bytes`),
e.g. as a policy update over ROS.
"""

import hashlib
import json
import os
from pathlib import Path
import tempfile
from typing import Dict, Union

from safetensors import SafetensorError
import safetensors.torch
import torch
from torch import nn

from vlit_ros.core.model.config import ModelConfig
from vlit_ros.core.model.executor import VLITModel
from vlit_ros.core.model.pretraining import PretrainingModel

CHECKPOINT_FORMAT = 'vlit_ros/checkpoint/1'
CONFIG_FILE = 'config.json'
WEIGHTS_FILE = 'model.safetensors'
ARCHITECTURES = {cls.architecture: cls for cls in (VLITModel, PretrainingModel)}
_CONFIG_KEYS = ('format', 'architecture', 'weights_sha256', 'model')
# Weights formats that unpickle on load; their presence gets a pointed refusal.
_PICKLE_SUFFIXES = ('.bin', '.pt', '.pth', '.ckpt', '.pkl', '.pickle')

Model = Union[VLITModel, PretrainingModel]


class CheckpointError(ValueError):
    """A checkpoint (or weights payload) is missing, malformed or does not fit the model."""


def shipped_state_dict(model: Model) -> Dict[str, torch.Tensor]:
    """Return the state dict without the frozen encoders the config references by name."""
    prefixes = tuple('vlm.' + prefix for prefix in model.vlm.referenced_prefixes())
    return {key: value for key, value in model.state_dict().items()
            if not key.startswith(prefixes)}


def shipped_parameter_count(model: nn.Module) -> int:
    """Return the number of parameters in the shipped weights (frozen references excluded)."""
    return sum(value.numel() for value in shipped_state_dict(model).values())


def weights_to_bytes(model: Model) -> bytes:
    """Serialise the shipped weights as safetensors bytes (architecture in the metadata)."""
    tensors = {key: value.detach().to('cpu').contiguous()
               for key, value in shipped_state_dict(model).items()}
    return safetensors.torch.save(tensors, metadata={'format': CHECKPOINT_FORMAT,
                                                     'architecture': model.architecture})


def _metadata(data: bytes) -> Dict[str, str]:
    # Only called on bytes safetensors has already parsed: the header is well formed.
    length = int.from_bytes(data[:8], 'little')
    return json.loads(data[8:8 + length]).get('__metadata__') or {}


def load_weights_from_bytes(model: Model, data: bytes, what: str = 'weights') -> None:
    """
    Validate safetensors bytes against `model` and copy them in (in place, exactly).

    Raises CheckpointError, leaving the model untouched, when the bytes are not safetensors,
    were written for another architecture, or any key, shape, dtype or value does not fit.
    """
    try:
        tensors = safetensors.torch.load(bytes(data))
    except SafetensorError as exc:
        raise CheckpointError(f'{what}: not a readable safetensors file (truncated, '
                              f'corrupt, or another format such as a pickle): {exc}') from exc
    architecture = _metadata(data).get('architecture')
    if architecture is not None and architecture != model.architecture:
        raise CheckpointError(f'{what}: written for a {architecture}, not a '
                              f'{model.architecture}')
    expected = shipped_state_dict(model)
    missing = sorted(set(expected) - set(tensors))
    unexpected = sorted(set(tensors) - set(expected))
    if missing or unexpected:
        raise CheckpointError(f'{what}: does not fit the {model.architecture} its config '
                              f'builds: missing {_few(missing)}, unexpected {_few(unexpected)}')
    for key, reference in expected.items():
        tensor = tensors[key]
        if tensor.shape != reference.shape:
            raise CheckpointError(f'{what}: {key} has shape {tuple(tensor.shape)}, the model '
                                  f'expects {tuple(reference.shape)}')
        if tensor.dtype != reference.dtype:
            raise CheckpointError(f'{what}: {key} has dtype {tensor.dtype}, the model '
                                  f'expects {reference.dtype}')
        if tensor.is_floating_point() and not bool(torch.isfinite(tensor).all()):
            raise CheckpointError(f'{what}: {key} holds NaN or infinite values')
    # Not strict: the referenced frozen encoders are (rightly) absent from the file.
    model.load_state_dict(tensors, strict=False)


def _few(keys, limit: int = 5) -> str:
    if not keys:
        return 'none'
    shown = ', '.join(keys[:limit])
    return shown if len(keys) <= limit else f'{shown} and {len(keys) - limit} more'


def atomic_write(path: Path, data: bytes) -> None:
    """Write `data` to `path` so that readers see the old file or the new one, never half."""
    path = Path(path)
    handle, temporary = tempfile.mkstemp(dir=path.parent, prefix=f'.{path.name}.',
                                         suffix='.tmp')
    try:
        with os.fdopen(handle, 'wb') as stream:
            stream.write(data)
            stream.flush()
            os.fsync(stream.fileno())
        os.replace(temporary, path)
    except BaseException:
        if os.path.exists(temporary):
            os.unlink(temporary)
        raise
    # Make the rename itself durable.
    directory = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(directory)
    finally:
        os.close(directory)


def save_checkpoint(model: Model, directory: Union[str, Path]) -> Path:
    """Write `config.json` and `model.safetensors` into `directory` (created if needed)."""
    if not isinstance(model, tuple(ARCHITECTURES.values())):
        raise TypeError(f'save_checkpoint takes a VLITModel or PretrainingModel, got '
                        f'{type(model).__name__}')
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    data = weights_to_bytes(model)
    config = {'format': CHECKPOINT_FORMAT, 'architecture': model.architecture,
              'weights_sha256': hashlib.sha256(data).hexdigest(),
              'model': model.config.to_dict()}
    atomic_write(directory / WEIGHTS_FILE, data)
    atomic_write(directory / CONFIG_FILE, (json.dumps(config, indent=2) + '\n').encode())
    return directory


def read_checkpoint_info(directory: Union[str, Path]) -> dict:
    """Return the validated `config.json` of a checkpoint (format, architecture, config)."""
    directory = Path(directory)
    if not directory.is_dir():
        raise CheckpointError(f'checkpoint {directory} is not a directory')
    config_path = directory / CONFIG_FILE
    if not config_path.is_file():
        pickles = sorted(p.name for p in directory.iterdir() if p.suffix in _PICKLE_SUFFIXES)
        hint = f' (found {", ".join(pickles)}: pickled weights are never loaded)' \
            if pickles else ''
        raise CheckpointError(f'checkpoint {directory} has no {CONFIG_FILE}{hint}')
    try:
        info = json.loads(config_path.read_text())
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        raise CheckpointError(f'{config_path}: not readable JSON: {exc}') from exc
    if not isinstance(info, dict):
        raise CheckpointError(f'{config_path}: expected a JSON object')
    missing = [key for key in _CONFIG_KEYS if key not in info]
    if missing:
        raise CheckpointError(f'{config_path}: missing keys {", ".join(missing)}')
    if info['format'] != CHECKPOINT_FORMAT:
        raise CheckpointError(f'{config_path}: format {info["format"]!r}, this code reads '
                              f'{CHECKPOINT_FORMAT!r}')
    if info['architecture'] not in ARCHITECTURES:
        raise CheckpointError(f'{config_path}: unknown architecture {info["architecture"]!r}; '
                              f'expected one of {", ".join(ARCHITECTURES)}')
    try:
        info['model'] = ModelConfig.from_dict(info['model'])
    except (TypeError, ValueError) as exc:
        raise CheckpointError(f'{config_path}: invalid model config: {exc}') from exc
    return info


def load_checkpoint(directory: Union[str, Path], device: Union[str, torch.device] = 'cpu'
                    ) -> Model:
    """Build the checkpoint's model from its config, load and validate its weights."""
    directory = Path(directory)
    info = read_checkpoint_info(directory)
    weights_path = directory / WEIGHTS_FILE
    try:
        data = weights_path.read_bytes()
    except OSError as exc:
        raise CheckpointError(f'checkpoint {directory}: cannot read {WEIGHTS_FILE}: '
                              f'{exc}') from exc
    digest = hashlib.sha256(data).hexdigest()
    if digest != info['weights_sha256']:
        raise CheckpointError(f'{weights_path}: SHA-256 {digest[:12]}... does not match '
                              f'{CONFIG_FILE} ({str(info["weights_sha256"])[:12]}...): the '
                              f'file is truncated, corrupt or from another save')
    try:
        model = ARCHITECTURES[info['architecture']](info['model'])
    except ValueError as exc:
        raise CheckpointError(f'checkpoint {directory}: cannot build the model: {exc}') from exc
    load_weights_from_bytes(model, data, str(weights_path))
    return model.to(device).eval()
