"""Pretraining losses on cases whose answer is known, and a toy run that must learn."""

import math

import numpy as np
import pytest
import torch

from vlit_ros.core.model import (ExecutorConfig, FusionConfig, hard_negatives, info_nce,
                                 mask_tokens, ModelConfig, PretrainConfig, PretrainingModel,
                                 TextConfig, VisionConfig)
from vlit_ros.core.model.pretraining import IGNORE_INDEX

COLOURS = {'red': (220, 30, 30), 'green': (30, 200, 40), 'blue': (30, 40, 220),
           'yellow': (230, 220, 30)}
CAPTIONS = [f'a {colour} cube in front of the robot' for colour in COLOURS]


@pytest.fixture(autouse=True, scope='module')
def one_thread():
    # Tiny tensors gain nothing from a second thread, and on a shared machine every
    # parallel region waits for a descheduled thread (seconds per step instead of 0.1 s).
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def tiny_config(**pretrain):
    # Without the grounding and task heads: only instruction tuning trains them, and in this
    # four-caption toy their untrained outputs would only add noise to the matching head.
    return ModelConfig(vision=VisionConfig(dim=32, depth=1, heads=2), text=TextConfig(),
                       fusion=FusionConfig(dim=64, depth=2, heads=2, grounding_dim=0,
                                           task_parameters=False),
                       executor=ExecutorConfig(hidden=32),
                       pretrain=PretrainConfig(mlm_dim=32, mlm_heads=2, itm_hidden=64,
                                               **pretrain))


def colour_images(seed=0):
    rng = np.random.default_rng(seed)
    images = np.empty((len(COLOURS), 96, 128, 3), np.uint8)
    for i, rgb in enumerate(COLOURS.values()):
        noise = rng.integers(-15, 16, (96, 128, 3))
        images[i] = np.clip(np.array(rgb) + noise, 0, 255)
    return images


# -- the losses on their own --------------------------------------------------------------

def test_info_nce_of_aligned_embeddings_has_its_closed_form_and_beats_shuffled():
    embeddings = torch.eye(4)
    # Logits are exp(scale) = 3 on matches and 0 elsewhere.
    scale = torch.tensor(math.log(3.0))
    aligned = info_nce(embeddings, embeddings, scale)
    assert aligned.item() == pytest.approx(-math.log(math.exp(3) / (math.exp(3) + 3)),
                                           rel=1e-5)
    shuffled = info_nce(embeddings, embeddings[[1, 2, 3, 0]], scale)
    assert shuffled.item() == pytest.approx(math.log(math.exp(3) + 3), rel=1e-5)
    assert aligned < shuffled


def test_hard_negatives_at_temperature_zero_take_the_most_similar_allowed_column():
    similarity = torch.tensor([[0.9, 0.8, 0.1], [0.2, 0.9, 0.7], [0.3, 0.4, 0.9]])
    allowed = ~torch.eye(3, dtype=torch.bool)
    index, valid = hard_negatives(similarity, allowed, 0.0)
    assert index.tolist() == [1, 2, 1] and valid.all()
    allowed[1] = False
    _, valid = hard_negatives(similarity, allowed, 0.0)
    assert valid.tolist() == [True, False, True]


def test_sampled_hard_negatives_are_allowed_and_favour_similar_columns():
    similarity = torch.tensor([[1.0, 0.9, 0.0, -0.5]]).repeat(4000, 1)
    allowed = torch.tensor([[False, True, True, True]]).repeat(4000, 1)
    index, valid = hard_negatives(similarity, allowed, 0.5,
                                  torch.Generator().manual_seed(0))
    assert valid.all() and (index != 0).all()
    counts = torch.bincount(index, minlength=4).float() / 4000
    expected = torch.softmax(torch.tensor([0.9, 0.0, -0.5]) / 0.5, 0)
    assert torch.allclose(counts[1:], expected, atol=0.03)


def test_mask_tokens_masks_words_only_and_at_least_one_per_caption():
    ids = torch.tensor([[101, 2000, 2001, 2002, 102, 0], [101, 2003, 102, 0, 0, 0]])
    attention = (ids != 0).long()
    special = (0, 101, 102)
    masked, labels = mask_tokens(ids, attention, special, 103, 1e-9,
                                 torch.Generator().manual_seed(0))
    assert ((labels != IGNORE_INDEX).sum(1) == 1).all()
    assert (masked == 103).sum() == 2
    masked, labels = mask_tokens(ids, attention, special, 103, 1.0)
    assert masked.tolist() == [[101, 103, 103, 103, 102, 0], [101, 103, 102, 0, 0, 0]]
    assert labels.tolist() == [[-100, 2000, 2001, 2002, -100, -100],
                               [-100, 2003, -100, -100, -100, -100]]


# -- the pretraining model -----------------------------------------------------------------

def test_forward_returns_the_three_weighted_losses():
    torch.manual_seed(0)
    model = PretrainingModel(tiny_config(mlm_weight=0.5, itm_weight=2.0, itc_weight=1.0))
    batch = {'image': colour_images(), 'text': CAPTIONS,
             'negative_text': ['a purple sphere', CAPTIONS[1], CAPTIONS[0], CAPTIONS[0]]}
    output, loss = model(batch)
    expected = 0.5 * output.mlm_loss + 2.0 * output.itm_loss + output.itc_loss
    assert torch.allclose(loss, expected)
    # 4 positives, 3 supplied negatives (one "negative" equal to its caption is dropped),
    # 4 mined image negatives.
    assert output.itm_labels.tolist() == [1.0] * 4 + [0.0] * 7
    assert output.similarity.shape == (4, 4)
    assert output.temperature.item() == pytest.approx(0.07, rel=1e-5)


def test_identical_captions_are_never_mined_as_negatives():
    torch.manual_seed(0)
    model = PretrainingModel(tiny_config())
    output, _ = model({'image': colour_images(), 'text': [CAPTIONS[0]] * 4})
    assert output.itm_labels.tolist() == [1.0] * 4
    output, _ = model({'image': colour_images(), 'text': CAPTIONS[:2] * 2})
    # Each image has two captions it may be contrasted with, each caption two images.
    assert output.itm_labels.tolist() == [1.0] * 4 + [0.0] * 8


def test_learned_temperature_is_clamped():
    model = PretrainingModel(tiny_config(temperature_min=0.05))
    with torch.no_grad():
        model.logit_scale.fill_(10.0)
    output, _ = model({'image': colour_images(), 'text': CAPTIONS})
    assert output.temperature.item() == pytest.approx(0.05, rel=1e-5)


@pytest.fixture(scope='module')
def trained():
    torch.manual_seed(0)
    model = PretrainingModel(tiny_config()).train()
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad],
                                  lr=6e-3)
    batch = {'image': colour_images(), 'text': CAPTIONS}
    history = []
    for step in range(80):
        output, loss = model(batch)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        history.append(output)
    return model.eval(), history


def test_matched_pairs_score_above_mismatched_after_training(trained):
    model, _ = trained
    vlm = model.vlm
    with torch.no_grad():
        tokens = vlm.image_tokens(vlm.preprocess(torch.from_numpy(colour_images(seed=1))))
        text = vlm.encode_text(CAPTIONS)
        size = len(CAPTIONS)
        rows = torch.arange(size).repeat_interleave(size)
        columns = torch.arange(size).repeat(size)
        logits = model.itm_logits(tokens[rows], text.index(columns)).view(size, size)
        cosine = vlm.image_embedding(tokens) @ text.pooled.t()
    for scores in (logits, cosine):
        diagonal = scores.diag()
        off = scores.masked_fill(torch.eye(size, dtype=torch.bool), float('-inf'))
        assert (diagonal > off.max(1).values).all(), scores


def test_each_loss_falls_during_the_toy_run(trained):
    _, history = trained
    for name in ('mlm_loss', 'itm_loss', 'itc_loss'):
        values = [getattr(output, name).item() for output in history]
        assert np.mean(values[-5:]) < 0.7 * np.mean(values[:5]), (name, values)
    assert history[-1].mlm_accuracy.item() > history[0].mlm_accuracy.item()
