"""
A second look at the centre of the image: the grounding map of a 2x zoom, merged into the map.

Beyond 2 m a target covers a small share of a 16-pixel patch, and the map rarely finds it
(docs/TRAINING.md, twenty-sixth session). Scoring the centre half of the image (half the
width, half the height, from `top`) upsampled to the full size puts four times the share of
each patch on the object, so far targets near the heading look like nearer ones.
`merge_zoom_logits` takes, for every patch of the full grid, the higher of its own logit and
those of the zoomed patches inside it.

    zoomed = centre_zoom(images)                       # uint8 (B, H, W, 3), same size
    merged = merge_zoom_logits(full, zoom_logits, zoom_cells(grid, (H, W)))
    boxes = zoom_boxes(boxes, (H, W))                  # ground-truth boxes, in the zoom

The last is for training the grounding head on the zoom (`vlit-ros finetune --zoom-weight`).
"""

from typing import Optional, Tuple

import numpy as np
import torch
import torch.nn.functional as F

ZOOM = 2


def _top(height: int, top: Optional[int]) -> int:
    """Return the crop's first row: `top`, or centred; refuse one that leaves the image."""
    crop = height // ZOOM
    top = (height - crop) // 2 if top is None else top
    if not 0 <= top <= height - crop:
        raise ValueError(f'the zoom crop of {crop} rows from row {top} leaves an image of '
                         f'{height} rows')
    return top


def centre_zoom(images: torch.Tensor, top: Optional[int] = None) -> torch.Tensor:
    """Return the centre half of uint8 images (B, H, W, 3), upsampled back to (H, W)."""
    height, width = images.shape[1:3]
    top = _top(height, top)
    left = (width - width // ZOOM) // 2
    crop = images[:, top:top + height // ZOOM, left:left + width // ZOOM]
    up = F.interpolate(crop.permute(0, 3, 1, 2).float(), size=(height, width),
                       mode='bilinear', align_corners=False)
    return up.round().clamp(0, 255).to(torch.uint8).permute(0, 2, 3, 1).contiguous()


def zoom_cells(grid: Tuple[int, int], size: Tuple[int, int],
               top: Optional[int] = None) -> torch.Tensor:
    """
    Return, for each zoomed patch (row-major), the index of the full patch it lies in.

    A model computes it once (`CrossModalFusion`'s `zoom_cells` buffer, on its device).
    """
    rows, cols = grid
    height, width = size
    top = _top(height, top)
    left = (width - width // ZOOM) // 2
    patch_h, patch_w = height // rows, width // cols
    cells = [((top + (r * patch_h + patch_h // 2) // ZOOM) // patch_h) * cols +
             (left + (c * patch_w + patch_w // 2) // ZOOM) // patch_w
             for r in range(rows) for c in range(cols)]
    return torch.tensor(cells, dtype=torch.long)


def merge_zoom_logits(full: torch.Tensor, zoom: torch.Tensor,
                      cells: torch.Tensor) -> torch.Tensor:
    """
    Return full-grid logits (B, N): each patch's own or its zoomed patches', the higher.

    `cells` is `zoom_cells` of the grid and image size, on the logits' device.
    """
    merged = full.clone()
    return merged.scatter_reduce(1, cells.expand_as(zoom), zoom.to(full.dtype), 'amax')


def zoom_boxes(boxes: np.ndarray, size: Tuple[int, int], top: Optional[int] = None
               ) -> np.ndarray:
    """
    Return boxes (B, 4: x0, x1, y0, y1 in image fractions) in the centre zoom's frame.

    The part of each box inside the zoomed crop, stretched to the zoom; a box that misses
    the crop (or an empty one) becomes empty, all zeros, as `datasets.NO_BOX`.
    """
    height, width = size
    top = _top(height, top)
    left = (width - width // ZOOM) // 2
    boxes = np.asarray(boxes, dtype=np.float32)
    x = np.clip((boxes[:, :2] * width - left) / (width // ZOOM), 0.0, 1.0)
    y = np.clip((boxes[:, 2:] * height - top) / (height // ZOOM), 0.0, 1.0)
    zoomed = np.concatenate([x, y], 1)
    empty = (x[:, 1] <= x[:, 0]) | (y[:, 1] <= y[:, 0])
    zoomed[empty] = 0.0
    return zoomed
