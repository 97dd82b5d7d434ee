"""
Dataset shards on disk: arrays in safetensors, metadata in JSON, no pickle anywhere.

A shard is `NAME.safetensors` (numeric arrays) plus `NAME.json` (texts, seeds, episode
records). The JSON is written last and atomically, so a shard counts as finished exactly
when its JSON exists; an interrupted run leaves at most a stray temporary file.
"""

import json
import os
from pathlib import Path
from typing import Dict, Iterator, List, Tuple

import numpy as np
from safetensors.numpy import load_file, save_file

SHARD_FORMAT_VERSION = 1
# Version of a dataset directory's manifest layout.
DATASET_VERSION = 1
MANIFEST = 'manifest.json'


def _atomic_write_bytes(path: Path, data: bytes) -> None:
    tmp = path.with_name(path.name + f'.tmp{os.getpid()}')
    tmp.write_bytes(data)
    os.replace(tmp, path)


def write_json(path: Path, data) -> None:
    """Write JSON atomically (a reader never sees half a file)."""
    _atomic_write_bytes(Path(path), (json.dumps(data, indent=1) + '\n').encode('utf-8'))


def read_json(path: Path):
    """Read a JSON file, naming it in the error when it is malformed."""
    try:
        return json.loads(Path(path).read_text(encoding='utf-8'))
    except (OSError, ValueError) as exc:
        raise ValueError(f'cannot read {path}: {exc}') from exc


def write_shard(path_stem: Path, arrays: Dict[str, np.ndarray], meta: dict) -> None:
    """Write `STEM.safetensors` then `STEM.json`; the JSON marks the shard as finished."""
    path_stem = Path(path_stem)
    path_stem.parent.mkdir(parents=True, exist_ok=True)
    tensors = path_stem.with_suffix('.safetensors')
    tmp = tensors.with_name(tensors.name + f'.tmp{os.getpid()}')
    save_file({k: np.ascontiguousarray(v) for k, v in arrays.items()}, str(tmp))
    os.replace(tmp, tensors)
    write_json(path_stem.with_suffix('.json'), dict(meta, version=SHARD_FORMAT_VERSION))


def shard_finished(path_stem: Path) -> bool:
    """Return whether both files of a shard exist."""
    path_stem = Path(path_stem)
    return path_stem.with_suffix('.json').is_file() and \
        path_stem.with_suffix('.safetensors').is_file()


def read_shard(path_stem: Path) -> Tuple[Dict[str, np.ndarray], dict]:
    """Return the arrays and metadata of a finished shard."""
    path_stem = Path(path_stem)
    meta = read_json(path_stem.with_suffix('.json'))
    if meta.get('version') != SHARD_FORMAT_VERSION:
        raise ValueError(f'{path_stem}: shard format version {meta.get("version")} is not '
                         f'supported (expected {SHARD_FORMAT_VERSION})')
    return load_file(str(path_stem.with_suffix('.safetensors'))), meta


def iter_shards(root: Path, kind: str) -> Iterator[Tuple[Dict[str, np.ndarray], dict]]:
    """Yield every finished shard of one kind listed in a dataset's manifest, in order."""
    root = Path(root)
    manifest = read_json(root / MANIFEST)
    names: List[str] = manifest.get('shards', {}).get(kind, [])
    for name in names:
        yield read_shard(root / kind / name)
