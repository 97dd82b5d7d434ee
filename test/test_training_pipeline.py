# Copyright 2026 vlit_ros developers
# Licensed under the Apache License, Version 2.0.

"""End to end on tiny data: gen-data -> pretrain -> finetune with DAgger; resume; DDP."""

import argparse
import copy
from dataclasses import replace
import gc
import json
import math
import os
from pathlib import Path
import subprocess
import sys
import weakref

import numpy as np
import pytest
from safetensors.numpy import load_file
import torch

from vlit_ros.cli import main
from vlit_ros.core.actions import ACTIONS
from vlit_ros.core.model import save_checkpoint, VLITModel
from vlit_ros.core.policy import ModelPolicy
from vlit_ros.sim.episode import make_episode, Observation
from vlit_ros.sim.tasks import FAMILIES
from vlit_ros.sim.world import World
from vlit_ros.training import finetune, loop, train_all
from vlit_ros.training.datasets import TrajectorySet
from vlit_ros.training.loop import STATE_DIR
from vlit_ros.training.phrasings import goto_reference, GotoParaphraser, tokenizer_words
from vlit_ros.training.presets import model_config

ROOT = Path(__file__).resolve().parents[1]
TINY_MODEL = ['--preset', 'tiny', '--threads', '2', '--quiet']


def _history(directory: Path):
    return json.loads((directory / STATE_DIR / 'state.json').read_text())['history']


@pytest.fixture(scope='module')
def data(tmp_path_factory):
    out = tmp_path_factory.mktemp('data')
    assert main(['gen-data', '--out', str(out), '--caption-scenes', '2', '--views-per-scene',
                 '12', '--trajectory-scenes', '3', '--scenes-per-shard', '2', '--quiet']) == 0
    return out


def _pretrain(data, out, steps, extra=()):
    return main(['pretrain', '--data', str(data), '--out', str(out), '--steps', str(steps),
                 '--batch-size', '8', '--lr', '2e-3', '--warmup', '2', '--log-every', '2',
                 '--held-out', '4', '--checkpoint-every', '0'] + TINY_MODEL + list(extra))


def test_pretrain_then_finetune_with_dagger_learns_and_acts(data, tmp_path):
    pretrained = tmp_path / 'pretrain'
    assert _pretrain(data, pretrained, 16) == 0
    history = _history(pretrained)
    assert history[-1]['loss'] < history[0]['loss']
    assert {'loss_mlm', 'loss_itm', 'loss_itc'} <= set(history[-1])
    assert (pretrained / 'report.png').stat().st_size > 1000
    assert list((pretrained / 'tensorboard').iterdir())

    tuned = tmp_path / 'finetune'
    assert main(['finetune', '--data', str(data), '--init', str(pretrained), '--out',
                 str(tuned), '--steps', '16', '--batch-size', '16', '--lr', '3e-3',
                 '--warmup', '2', '--log-every', '4', '--dagger-rounds', '1',
                 '--dagger-episodes', '2', '--dagger-steps', '4', '--dagger-parallel', '2',
                 '--dagger-temperature', '1.0',  # the sampling learner's path
                 '--eval-episodes', '2', '--checkpoint-every', '0'] + TINY_MODEL) == 0
    history = _history(tuned)
    assert history[-1]['step'] == 20
    assert min(row['loss_action'] for row in history) < history[0]['loss_action']
    assert all(math.isfinite(row[key]) for row in history
               for key in ('loss', 'loss_grounding', 'loss_task', 'loss_auxiliary',
                           'loss_patch_attributes', 'loss_text_attributes'))
    record = json.loads((tuned / 'training.json').read_text())
    assert record['dagger_rounds'][0]['frames'] > 0
    assert record['evaluation']['episodes_total'] == 2
    shard = load_file(str(tuned / 'dagger' / 'round_00' / 'rank_000.safetensors'))
    assert shard['image'].shape[1:] == (96, 128, 3)
    # train-all's polish stage trains on the expert data plus every DAgger round, pooled.
    pooled = tmp_path / 'pooled'
    assert train_all.pool_dagger_data(tuned, data, pooled) == 1
    expert = TrajectorySet.load([data], FAMILIES, 0)
    both = TrajectorySet.load([data, pooled], FAMILIES, 0)
    assert len(both) == len(expert) + record['dagger_rounds'][0]['frames']
    with pytest.raises(ValueError, match='no DAgger rounds'):
        train_all.pool_dagger_data(pretrained, data, tmp_path / 'nothing')

    policy = ModelPolicy.from_checkpoint(tuned)
    spec = make_episode(0, 7)
    with World(scene=spec.scene) as world:
        policy.reset(spec.instruction.text)
        obs = Observation(world, world.odometry().as_tuple(), 0.0)
        assert policy.act(obs) in ACTIONS


def test_grounding_and_task_losses_fall_on_a_fixed_batch(data):
    torch.manual_seed(0)
    model = VLITModel(model_config('tiny')).train()
    frames = TrajectorySet.load([data], FAMILIES, model.start_action, all_objects=True)
    context = loop.DistributedContext()
    batch = finetune.FamilyBatches(frames, 32, 0, context).batch(0)
    # Every object's boxes are loaded only when asked for (the per-patch attribute labels).
    plain = TrajectorySet.load([data], FAMILIES, model.start_action)
    assert plain.object_class is None and plain.object_box is None
    assert 'object_class' not in finetune.FamilyBatches(plain, 32, 0, context).batch(0)
    assert batch['target_box'].any(), 'the batch should hold frames with the target in view'
    assert batch['query_box'].any(), 'the batch should hold relabelled queries in view'
    assert (batch['object_class'] > 0).any() and (batch['query_class'] > 0).all()
    with pytest.raises(ValueError, match='--task-weight must be a non-negative number'):
        finetune.LossWeights(task=math.nan)
    with pytest.raises(ValueError, match='--patch-attributes-weight must be a non-negative'):
        finetune.LossWeights(patch_attributes=-1.0)
    weights = finetune.LossWeights(auxiliary=0.0, patch_attributes=0.2, text_attributes=0.5)
    heads = finetune.AuxiliaryHeads(model.vlm.state_dim, model.vlm.text_dim, weights)
    assert heads.state is None and heads.patches is not None and heads.text is not None
    optimiser = torch.optim.Adam(list(model.parameters()) + list(heads.parameters()), lr=1e-3)
    history = []
    for _ in range(40):
        losses = finetune.imitation_losses(model, heads, batch, weights)
        optimiser.zero_grad()
        losses['loss'].backward()
        optimiser.step()
        history.append({k: float(v.detach()) for k, v in losses.items()})
    for key in ('loss_grounding', 'loss_query', 'loss_task', 'loss_action',
                'loss_patch_attributes', 'loss_text_attributes'):
        assert history[-1][key] < 0.5 * history[0][key], key
    # Without its weight the relabelled query is neither computed nor counted.
    losses = finetune.imitation_losses(model, heads, batch,
                                       finetune.LossWeights(query=0.0, text_attributes=0.5))
    assert 'loss_query' not in losses and 'loss_text_attributes' in losses
    # Without the heads (or their weights) the attribute losses are not counted.
    losses = finetune.imitation_losses(model, None, batch, weights)
    assert 'loss_patch_attributes' not in losses and 'loss_text_attributes' not in losses
    # Presence labels reach both grounding losses (they differ wherever a box is small).
    model.eval()
    with torch.no_grad():
        coverage = finetune.imitation_losses(model, None, batch, weights)
        presence = finetune.imitation_losses(model, None, batch, weights, 'presence')
    for key in ('loss_grounding', 'loss_query'):
        assert float(presence[key]) != float(coverage[key]), key
    assert float(presence['loss_action']) == float(coverage['loss_action'])
    # With the zoomed map the executor reads the merged map, as `VLITModel.forward` (and so
    # DAgger and evaluation) does; the grounding losses still score the full images' map.
    zooming = copy.deepcopy(model)
    zooming.vlm.fusion.zoom_map = True
    with torch.no_grad():
        zoomed = finetune.imitation_losses(zooming, None, batch, replace(weights, zoom=1.0))
        _, forward_loss = zooming(batch)
    for key in ('loss_grounding', 'loss_query'):
        assert float(zoomed[key]) == float(coverage[key]), key
    assert float(zoomed['loss_action']) != float(coverage['loss_action'])
    assert float(forward_loss) == pytest.approx(float(zoomed['loss_action']), rel=1e-5)
    # Its own grounding losses (boxes mapped into the zoom) count for zooming models only.
    assert float(zoomed['loss_zoom']) > 0.0 and 'loss_zoom' not in coverage
    with torch.no_grad():
        unweighted = finetune.imitation_losses(zooming, None, batch, weights)
    assert 'loss_zoom' not in unweighted and weights.zoom == 0.0, 'off by default'
    assert float(unweighted['loss']) < float(zoomed['loss'])


def test_paraphrased_batches_rephrase_goto_instructions_only(data):
    frames = TrajectorySet.load([data], FAMILIES, VLITModel(model_config('tiny')).start_action)
    context = loop.DistributedContext()
    paraphraser = GotoParaphraser(tokenizer_words())
    plain = finetune.FamilyBatches(frames, 64, 0, context)
    texts, index = plain.instructions(0, plain.indices(0))
    assert texts is frames.texts
    batches = finetune.FamilyBatches(frames, 64, 0, context, paraphrase=0.5,
                                     paraphraser=paraphraser)
    changed = goto_rows = 0
    for step in range(4):
        rows = batches.indices(step)
        texts, index = batches.instructions(step, rows)
        assert len(set(texts)) == len(texts) and index.shape == rows.shape
        again = batches.instructions(step, rows)
        assert again[0] == texts and np.array_equal(again[1], index)
        for row, position in zip(rows, index):
            original = frames.texts[frames.text_index[row]]
            if frames.families[frames.family[row]] != 'goto':
                assert texts[position] == original
                continue
            goto_rows += 1
            changed += texts[position] != original
            assert goto_reference(original) in texts[position]
        assert batches.batch(step)['texts'] == texts
    assert goto_rows > 0 and 0.25 * goto_rows < changed < 0.75 * goto_rows
    for share in (-0.1, 1.5, math.nan):
        with pytest.raises(ValueError, match='between 0 and 1'):
            finetune.FamilyBatches(frames, 64, 0, context, paraphrase=share,
                                   paraphraser=paraphraser)


def test_task_head_warm_up_reads_each_instructions_numbers(data):
    torch.manual_seed(0)
    model = VLITModel(model_config('tiny'))
    frames = TrajectorySet.load([data], FAMILIES, model.start_action)
    texts, targets, masks = finetune.task_examples(frames)
    assert texts and masks.any(1).all()
    # Every turn and move instruction of the data, each with its one requested number.
    assert sorted(set(texts)) == sorted(texts)
    assert set(np.nonzero(masks)[1]) <= {0, 1} and (masks.sum(1) == 1).all()
    assert finetune.warm_up_task_head(model, frames, 0) is None
    before = model.vlm.fusion.task_parameters(model.vlm.encode_text(texts)).detach()
    fitted = finetune.warm_up_task_head(model, frames, 400)
    assert fitted['instructions'] == len(texts)
    assert fitted['turn_error_deg'] < 5.0 and fitted['move_error_m'] < 0.05, fitted
    with torch.no_grad():
        after = model.vlm.fusion.task_parameters(model.vlm.encode_text(texts))
    error_before = ((before - torch.as_tensor(targets)).abs() * torch.as_tensor(masks)).sum()
    error_after = ((after - torch.as_tensor(targets)).abs() * torch.as_tensor(masks)).sum()
    assert error_after < 0.1 * error_before


def test_resume_continues_from_the_saved_step(data, tmp_path):
    assert _pretrain(data, tmp_path / 'straight', 6) == 0
    assert _pretrain(data, tmp_path / 'resumed', 3) == 0
    state = json.loads((tmp_path / 'resumed' / STATE_DIR / 'state.json').read_text())
    assert state['step'] == 3
    halfway = load_file(str(tmp_path / 'resumed' / 'model.safetensors'))
    assert _pretrain(data, tmp_path / 'resumed', 6) == 0
    history = _history(tmp_path / 'resumed')
    assert [row['step'] for row in history] == [2, 3, 4, 6]
    straight = load_file(str(tmp_path / 'straight' / 'model.safetensors'))
    resumed = load_file(str(tmp_path / 'resumed' / 'model.safetensors'))
    # Not bit for bit across machines: attention key biases get only rounding-error gradients
    # (softmax ignores a shift shared by all keys), so they hold noise of about 1e-6. A
    # resume that lost the optimiser or data state is off by learning-rate-sized steps.
    for key, value in straight.items():
        np.testing.assert_allclose(resumed[key], value, rtol=1e-5, atol=2e-5, err_msg=key)
    # The tolerance tells three steps from six.
    assert max(np.abs(halfway[key] - value).max() for key, value in straight.items()) > 1e-3


def test_no_fusion_state_configures_a_new_executor_only(data, tmp_path):
    pretrained = tmp_path / 'pretrain'
    assert _pretrain(data, pretrained, 1) == 0
    parser = argparse.ArgumentParser()
    finetune.add_arguments(parser)

    def build(init, *extra):
        return finetune.build_model(parser.parse_args(
            ['--data', str(data), '--out', str(tmp_path / 'x'), '--init', str(init)] +
            list(extra)))

    model = build(pretrained, '--no-fusion-state')
    assert model.config.executor.fusion_state is False
    assert model.executor.skip == model.config.fusion.dim
    assert build(pretrained).config.executor.fusion_state is True
    # A fine-tuned model keeps its executor: the option may restate it, never change it.
    save_checkpoint(model, tmp_path / 'skipping')
    assert build(tmp_path / 'skipping').executor.skip == model.config.fusion.dim
    assert build(tmp_path / 'skipping', '--no-fusion-state').executor.skip > 0
    save_checkpoint(build(pretrained), tmp_path / 'reading')
    with pytest.raises(ValueError, match='already has one that reads the fusion state'):
        build(tmp_path / 'reading', '--no-fusion-state')
    # Map memory likewise: a new executor gets it, a trained one without it is refused.
    remembering = build(pretrained, '--map-memory')
    assert remembering.executor.memory and not model.executor.memory
    save_checkpoint(remembering, tmp_path / 'remembering')
    assert build(tmp_path / 'remembering').executor.memory
    assert build(tmp_path / 'remembering', '--map-memory').executor.memory
    with pytest.raises(ValueError, match='one without map memory'):
        build(tmp_path / 'reading', '--map-memory')
    # And the map's peak.
    peaking = build(pretrained, '--map-peak')
    assert peaking.executor.peak and not model.executor.peak
    save_checkpoint(peaking, tmp_path / 'peaking')
    assert build(tmp_path / 'peaking').executor.peak
    with pytest.raises(ValueError, match="does not read the map's peak"):
        build(tmp_path / 'reading', '--map-peak')
    # A convolutional stem is built into new models only.
    with pytest.raises(ValueError, match='--conv-stem configures a new model'):
        build(tmp_path / 'reading', '--conv-stem', '8')
    fresh = finetune.build_model(parser.parse_args(
        ['--data', str(data), '--out', str(tmp_path / 'x'), '--preset', 'tiny',
         '--conv-stem', '8']))
    assert fresh.config.vision.conv_stem == 8
    # The zoomed map likewise: a new model (from pretraining or a preset) gets it and keeps
    # it through its checkpoint; a fine-tuned model without it is refused.
    zooming = build(pretrained, '--zoom-map')
    assert zooming.config.fusion.zoom_map and zooming.vlm.fusion.zoom_map
    assert not model.vlm.fusion.zoom_map
    save_checkpoint(zooming, tmp_path / 'zooming')
    assert build(tmp_path / 'zooming').vlm.fusion.zoom_map
    with pytest.raises(ValueError, match='trained without the zoomed map'):
        build(tmp_path / 'reading', '--zoom-map')
    assert finetune.build_model(parser.parse_args(
        ['--data', str(data), '--out', str(tmp_path / 'x'), '--preset', 'tiny',
         '--zoom-map'])).vlm.fusion.zoom_map
    # train-all hands the option to the finetune stage only (polish continues that model).
    out = tmp_path / 'all'
    argv = ['--out', str(out), '--data', str(data), '--no-fusion-state',
            '--grounding-labels', 'presence', '--patch-attributes-weight', '0.7']
    parser = argparse.ArgumentParser()
    train_all.add_arguments(parser)
    stages = {name: argv for name, _, argv in train_all.plan_stages(parser.parse_args(argv))}
    assert list(stages) == ['gen-data', 'pretrain', 'finetune', 'polish']
    assert '--trajectory-scenes' not in stages['gen-data']  # gen-data's default
    more = parser.parse_args(argv + ['--trajectory-scenes', '1200'])
    gen_data = train_all.plan_stages(more)[0][2]
    assert gen_data[gen_data.index('--trajectory-scenes') + 1] == '1200'
    assert '--no-fusion-state' in stages['finetune']
    assert '--no-fusion-state' not in stages['polish']
    remembered = {name: a for name, _, a in
                  train_all.plan_stages(parser.parse_args(argv + ['--map-memory']))}
    assert '--map-memory' in remembered['finetune'] and '--map-memory' not in stages['finetune']
    assert '--map-memory' not in remembered['polish']
    zoomed = {name: a for name, _, a in
              train_all.plan_stages(parser.parse_args(argv + ['--zoom-map']))}
    assert '--zoom-map' in zoomed['finetune'] and '--zoom-map' not in stages['finetune']
    assert '--zoom-map' not in zoomed['polish']
    peaked = {name: a for name, _, a in
              train_all.plan_stages(parser.parse_args(argv + ['--map-peak']))}
    assert '--map-peak' in peaked['finetune'] and '--map-peak' not in stages['finetune']
    assert '--map-peak' not in peaked['polish']
    stem = {name: a for name, _, a in
            train_all.plan_stages(parser.parse_args(argv + ['--conv-stem', '16']))}
    assert stem['pretrain'][stem['pretrain'].index('--conv-stem') + 1] == '16'
    assert '--conv-stem' not in stem['finetune'] and '--conv-stem' not in stages['pretrain']
    bare = {name: a for name, _, a in train_all.plan_stages(
        parser.parse_args(argv + ['--conv-stem', '16', '--no-pretrain']))}
    assert bare['finetune'][bare['finetune'].index('--conv-stem') + 1] == '16'
    # DAgger samples its learner only when asked, and polish has no rollouts.
    assert '--dagger-temperature' not in stages['finetune']
    sampled = {name: a for name, _, a in
               train_all.plan_stages(parser.parse_args(argv + ['--dagger-temperature', '0.5']))}
    assert sampled['finetune'][sampled['finetune'].index('--dagger-temperature') + 1] == '0.5'
    assert '--dagger-temperature' not in sampled['polish']
    # The far search labels both the expert data and the DAgger rounds, never one alone.
    assert all('--expert-far-search' not in a for a in stages.values())
    far = {name: a for name, _, a in
           train_all.plan_stages(parser.parse_args(argv + ['--expert-far-search']))}
    assert '--expert-far-search' in far['gen-data'] and '--expert-far-search' in far['finetune']
    assert '--expert-far-search' not in far['polish']
    # So do the observable turns.
    assert all('--expert-observable-turns' not in a for a in stages.values())
    turns = {name: a for name, _, a in
             train_all.plan_stages(parser.parse_args(argv + ['--expert-observable-turns']))}
    assert all('--expert-observable-turns' in turns[name] for name in ('gen-data', 'finetune'))
    assert '--expert-observable-turns' not in turns['polish']
    short = {name: a for name, _, a in
             train_all.plan_stages(parser.parse_args(argv + ['--expert-short-sweep']))}
    assert all('--expert-short-sweep' in short[name] for name in ('gen-data', 'finetune'))
    assert '--expert-short-sweep' not in short['polish']
    assert all('--expert-short-sweep' not in a for a in stages.values())
    arcs = {name: a for name, _, a in
            train_all.plan_stages(parser.parse_args(argv + ['--expert-far-arcs']))}
    assert all('--expert-far-arcs' in arcs[name] for name in ('gen-data', 'finetune'))
    assert '--expert-far-arcs' not in arcs['polish'] and '--expert-short-sweep' not in \
        arcs['gen-data']
    clear = {name: a for name, _, a in train_all.plan_stages(parser.parse_args(
        argv + ['--expert-far-arcs', '--expert-clear-arcs']))}
    assert all({'--expert-far-arcs', '--expert-clear-arcs'} <= set(clear[name])
               for name in ('gen-data', 'finetune'))
    assert '--expert-clear-arcs' not in clear['polish'] + arcs['finetune']
    # The grounding labels and attribute weights are the same in both stages that train the
    # map; a weight not given is the shipped checkpoint's (finetune's default).
    for name in ('finetune', 'polish'):
        stage = stages[name]
        assert stage[stage.index('--grounding-labels') + 1] == 'presence'
        assert float(stage[stage.index('--patch-attributes-weight') + 1]) == 0.7
        assert float(stage[stage.index('--text-attributes-weight') + 1]) == \
            finetune.LossWeights().text_attributes == 0.5
        assert float(stage[stage.index('--paraphrase') + 1]) == finetune.PARAPHRASE_SHARE
    rephrased = {name: a for name, _, a in
                 train_all.plan_stages(parser.parse_args(argv + ['--paraphrase', '0']))}
    for name in ('finetune', 'polish'):
        assert float(rephrased[name][rephrased[name].index('--paraphrase') + 1]) == 0.0


def test_train_all_frees_a_stage_before_the_next_one_loads(tmp_path, monkeypatch):
    # A stage's dataset can sit in a reference cycle after the stage returns (closures,
    # the trainer); train-all collects it, or the next stage's data doubles the peak memory.
    held = []

    class Dataset:
        pass

    class Stage:
        def __init__(self, first):
            self.first = first

        @staticmethod
        def add_arguments(parser):
            pass

        def run(self, args):
            if self.first:
                data = Dataset()
                data.cycle = data
                held.append(weakref.ref(data))
            else:
                held.append(held[0]())
            return 0

    monkeypatch.setattr(train_all, 'plan_stages', lambda args: [
        ('gen-data', Stage(True), []), ('pretrain', Stage(False), [])])
    gc.disable()
    try:
        assert main(['train-all', '--out', str(tmp_path / 'run'), '--quiet']) == 0
    finally:
        gc.enable()
    assert len(held) == 2 and held[1] is None
    record = json.loads((tmp_path / 'run' / 'train_all.json').read_text())
    assert set(record['stage_seconds']) == {'gen-data', 'pretrain'}


def test_a_negative_or_nan_dagger_temperature_is_refused(data, tmp_path, capsys):
    for bad in ('-0.5', 'nan'):
        assert main(['finetune', '--data', str(data), '--out', str(tmp_path / bad),
                     '--dagger-temperature', bad] + TINY_MODEL) == 2
        assert '--dagger-temperature must be 0 or more' in capsys.readouterr().err


def test_resume_with_another_model_configuration_is_refused(data, tmp_path, capsys):
    out = tmp_path / 'run'
    assert _pretrain(data, out, 2) == 0
    # A hand edit of the checkpoint's config (or other settings on the command line) must
    # not be trained over and silently rewritten from the command's settings on resume.
    config = json.loads((out / 'config.json').read_text())
    config['model']['executor']['hidden'] += 1
    edited = json.dumps(config, indent=2) + '\n'
    (out / 'config.json').write_text(edited)
    weights = (out / 'model.safetensors').read_bytes()
    capsys.readouterr()
    assert _pretrain(data, out, 4) == 2
    error = capsys.readouterr().err
    assert 'another model configuration' in error and 'executor.hidden' in error
    assert (out / 'config.json').read_text() == edited
    assert (out / 'model.safetensors').read_bytes() == weights
    assert json.loads((out / STATE_DIR / 'state.json').read_text())['step'] == 2


@pytest.mark.timeout(60)
def test_pretrain_under_torchrun_with_two_gloo_processes(data, tmp_path):
    out = tmp_path / 'ddp'
    env = dict(os.environ, OMP_NUM_THREADS='1', MUJOCO_GL=os.environ.get('MUJOCO_GL', 'egl'))
    command = [sys.executable, '-m', 'torch.distributed.run', '--nproc_per_node', '2',
               '--master_port', str(29500 + os.getpid() % 1000), '-m', 'vlit_ros.cli',
               'pretrain', '--data', str(data), '--out', str(out), '--steps', '3',
               '--batch-size', '4', '--log-every', '1', '--held-out', '4', '--preset', 'tiny',
               '--threads', '1', '--quiet']
    done = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=55)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    history = _history(out)
    assert [row['step'] for row in history] == [1, 2, 3]
    assert (out / 'model.safetensors').is_file() and (out / 'report.png').is_file()
