"""
Visual Genome region descriptions as image-caption pairs, so pretraining can use real images.

Input is the Visual Genome layout: `ROOT/region_descriptions.json` (a list of
`{"id": IMAGE_ID, "regions": [{"region_id", "image_id", "phrase", "x", "y", "width",
"height"}, ...]}`) and the images, named `IMAGE_ID.jpg` (or .png), anywhere under
`ROOT/images/` (or another folder given). Each region becomes one pair: the box, widened to
the camera's aspect ratio with some context, cropped and resized to the camera resolution,
and its phrase. The negative caption of a pair is the phrase of a region of another image.
"""

from dataclasses import dataclass
import json
from pathlib import Path
import random
from typing import Dict, Iterator, List, Optional, Tuple

import cv2
import numpy as np
from tqdm import tqdm

from vlit_ros.sim.scene import RobotSpec
from vlit_ros.training.shards import DATASET_VERSION, MANIFEST, write_json, write_shard

IMAGE_SUFFIXES = ('.jpg', '.jpeg', '.png')
# Regions smaller than this (pixels, either side) carry too little to learn from.
MIN_REGION_PIXELS = 8
# The crop is the box grown by this factor, so the phrase's object keeps some context.
CONTEXT_SCALE = 1.25
REGIONS_PER_SHARD = 2000


@dataclass(frozen=True)
class Region:
    """One described box of one image."""

    image_id: int
    phrase: str
    x: int
    y: int
    width: int
    height: int


def read_regions(path: Path) -> List[Tuple[int, List[Region]]]:
    """Parse `region_descriptions.json` into (image id, regions) with clear errors."""
    try:
        data = json.loads(Path(path).read_text(encoding='utf-8'))
    except (OSError, ValueError) as exc:
        raise ValueError(f'cannot read Visual Genome regions {path}: {exc}') from exc
    if not isinstance(data, list):
        raise ValueError(f'{path}: expected a list of images with "regions"')
    images = []
    for entry in data:
        try:
            image_id = int(entry['id'])
            regions = [Region(int(r.get('image_id', image_id)), str(r['phrase']).strip(),
                              int(r['x']), int(r['y']), int(r['width']), int(r['height']))
                       for r in entry['regions']]
        except (KeyError, TypeError, ValueError) as exc:
            raise ValueError(f'{path}: malformed image entry {str(entry)[:80]}: {exc}') from exc
        images.append((image_id, [r for r in regions if r.phrase]))
    return images


def index_images(folder: Path) -> Dict[int, Path]:
    """Map image ids to files for every `ID.jpg|.jpeg|.png` under `folder`."""
    found = {}
    for path in sorted(Path(folder).rglob('*')):
        if path.suffix.lower() in IMAGE_SUFFIXES and path.stem.isdigit():
            found.setdefault(int(path.stem), path)
    return found


def crop_region(image: np.ndarray, region: Region, width: int, height: int
                ) -> Optional[np.ndarray]:
    """
    Crop a region with context at the output aspect ratio and resize it (RGB uint8).

    Returns None when the box is too small or falls outside the image.
    """
    rows, cols = image.shape[:2]
    x0, y0 = max(region.x, 0), max(region.y, 0)
    x1, y1 = min(region.x + region.width, cols), min(region.y + region.height, rows)
    if x1 - x0 < MIN_REGION_PIXELS or y1 - y0 < MIN_REGION_PIXELS:
        return None
    cx, cy = (x0 + x1) / 2.0, (y0 + y1) / 2.0
    box_w, box_h = (x1 - x0) * CONTEXT_SCALE, (y1 - y0) * CONTEXT_SCALE
    aspect = width / height
    box_w, box_h = max(box_w, box_h * aspect), max(box_h, box_w / aspect)
    # Shrink to fit the image while keeping the aspect ratio, then shift inside it.
    scale = min(1.0, cols / box_w, rows / box_h)
    box_w, box_h = box_w * scale, box_h * scale
    left = int(round(min(max(cx - box_w / 2.0, 0.0), cols - box_w)))
    top = int(round(min(max(cy - box_h / 2.0, 0.0), rows - box_h)))
    crop = image[top:top + max(1, int(round(box_h))), left:left + max(1, int(round(box_w)))]
    interpolation = cv2.INTER_AREA if crop.shape[1] > width else cv2.INTER_LINEAR
    return cv2.resize(crop, (width, height), interpolation=interpolation)


def iter_pairs(root: Path, images_dir: Optional[Path] = None, width: int = 128,
               height: int = 96, max_regions: Optional[int] = None
               ) -> Iterator[Tuple[np.ndarray, str, int]]:
    """Yield (image crop, phrase, image id) for every usable region, in file order."""
    root = Path(root)
    images = read_regions(root / 'region_descriptions.json')
    files = index_images(images_dir or root / 'images')
    if not files:
        raise ValueError(f'no images named IMAGE_ID.jpg/.png under {images_dir or root}')
    produced = 0
    for image_id, regions in images:
        if image_id not in files or not regions:
            continue
        bgr = cv2.imread(str(files[image_id]), cv2.IMREAD_COLOR)
        if bgr is None:
            raise ValueError(f'cannot decode image {files[image_id]}')
        rgb = cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)
        for region in regions:
            crop = crop_region(rgb, region, width, height)
            if crop is None:
                continue
            yield crop, region.phrase.lower(), image_id
            produced += 1
            if max_regions is not None and produced >= max_regions:
                return


def convert_visual_genome(root: Path, out: Path, images_dir: Optional[Path] = None,
                          max_regions: Optional[int] = None, seed: int = 0,
                          progress: bool = True) -> dict:
    """Write Visual Genome regions as caption shards with a manifest; return the manifest."""
    robot = RobotSpec()
    pairs = list(tqdm(iter_pairs(root, images_dir, robot.image_width, robot.image_height,
                                 max_regions), desc='visual genome regions', unit='region',
                      disable=not progress, dynamic_ncols=True))
    if not pairs:
        raise ValueError(f'no usable regions in {root}')
    if len({image_id for _, _, image_id in pairs}) < 2:
        raise ValueError(f'{root}: negatives come from other images; need at least two')
    rng = random.Random(seed)
    names = []
    out = Path(out)
    for start in range(0, len(pairs), REGIONS_PER_SHARD):
        chunk = pairs[start:start + REGIONS_PER_SHARD]
        negatives = []
        for _, _, image_id in chunk:
            while True:
                _, phrase, other = pairs[rng.randrange(len(pairs))]
                if other != image_id:
                    negatives.append(phrase)
                    break
        name = f'shard_{start // REGIONS_PER_SHARD:05d}'
        write_shard(out / 'captions' / name, {'image': np.stack([p[0] for p in chunk])}, {
            'kind': 'captions', 'records': len(chunk), 'captions': [p[1] for p in chunk],
            'negatives': negatives, 'negative_kinds': ['other_image'] * len(chunk),
            'image_ids': [p[2] for p in chunk], 'source': 'visual_genome'})
        names.append(name)
    manifest = {
        'version': DATASET_VERSION, 'complete': True, 'source': 'visual_genome', 'config': None,
        'root': str(root), 'image_shape': [robot.image_height, robot.image_width, 3],
        'counts': {'caption_views': len(pairs), 'trajectory_frames': 0,
                   'trajectory_episodes': 0},
        'shards': {'captions': names, 'trajectories': []},
    }
    write_json(out / MANIFEST, manifest)
    return manifest
