# Copyright 2026 vlit_ros developers
# Licensed under the Apache License, Version 2.0.

"""The shared training loop: batch order, schedule, pickle-free resume that repeats exactly."""

import json

import pytest
import torch
from torch import nn

from vlit_ros.training.loop import (batch_indices, cosine_lr, DistributedContext, LoopConfig,
                                    seed_everything, STATE_DIR, Trainer)


def _toy():
    seed_everything(3)
    return nn.Sequential(nn.Linear(4, 16), nn.Dropout(0.3), nn.ReLU(), nn.Linear(16, 1))


def _loss_fn(model, step):
    generator = torch.Generator().manual_seed(step)
    x = torch.randn(8, 4, generator=generator)
    y = x.sum(dim=1, keepdim=True)
    loss = nn.functional.mse_loss(model(x), y)
    return {'loss': loss, 'mse': loss.detach()}


def _save(directory):
    directory.mkdir(parents=True, exist_ok=True)


def _config(until):
    return LoopConfig(until_step=until, lr=1e-2, warmup=2, schedule_start=0,
                      schedule_end=8, log_every=2)


def _trainer(model, out):
    return Trainer(model, _loss_fn, _save, out, DistributedContext(), 'toy')


def test_batch_indices_cover_each_epoch_once_and_split_across_ranks():
    seen = torch.cat([batch_indices(10, 5, step, 7, DistributedContext()) for step in (0, 1)])
    assert sorted(seen.tolist()) == list(range(10))
    ranks = [DistributedContext(rank=r, world_size=2) for r in (0, 1)]
    both = torch.cat([batch_indices(10, 5, 0, 7, c) for c in ranks])
    assert torch.equal(both, seen)
    assert torch.equal(batch_indices(10, 5, 1, 7, DistributedContext()),
                       batch_indices(10, 5, 1, 7, DistributedContext()))


def test_cosine_schedule_warms_up_and_decays():
    lrs = [cosine_lr(s, 0, 100, 1.0, 10) for s in range(100)]
    assert lrs[0] == pytest.approx(0.1) and lrs[9] == pytest.approx(1.0)
    assert lrs[-1] < 0.06 and all(a >= b for a, b in zip(lrs[10:], lrs[11:]))


def test_resume_continues_from_the_saved_step_exactly(tmp_path):
    straight = _trainer(_toy(), tmp_path / 'straight')
    straight.train(_config(8))
    expected = [p.detach().clone() for p in straight.model.parameters()]

    first = _trainer(_toy(), tmp_path / 'resumed')
    first.train(_config(4))
    first.checkpoint()
    first.close()
    state = json.loads((tmp_path / 'resumed' / STATE_DIR / 'state.json').read_text())
    assert state['step'] == 4
    # Scramble the global RNG: the resume must restore it.
    torch.manual_seed(12345)
    model = _toy()
    second = _trainer(model, tmp_path / 'resumed')
    assert second.resume() and second.step == 4
    # The model weights come from the inference checkpoint in real use; here copy them.
    model.load_state_dict(first.model.state_dict())
    second.train(_config(8))
    for got, want in zip(second.model.parameters(), expected):
        assert torch.equal(got, want)
    assert [r['step'] for r in second.history] == [2, 4, 6, 8]
    assert second.history[-1]['loss'] < second.history[0]['loss']
    assert (tmp_path / 'resumed' / 'tensorboard').is_dir()
    second.close()
    straight.close()


def test_nothing_to_resume_from(tmp_path):
    trainer = _trainer(_toy(), tmp_path)
    assert not trainer.resume() and trainer.step == 0
    trainer.close()
