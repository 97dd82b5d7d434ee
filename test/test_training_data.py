# Copyright 2026 vlit_ros developers
# Licensed under the Apache License, Version 2.0.

"""Training data: captions, gen-data determinism and resumption, held-out phrasings."""

from dataclasses import replace
import json
import math
import os
from pathlib import Path
import random
import signal
import subprocess
import sys
import time
from unittest import mock

import numpy as np
import pytest

from vlit_ros.sim.episode import TRAINING_SEED_BASE
from vlit_ros.sim.expert import ExpertRules
from vlit_ros.sim.scene import COLORS, MAX_OBJECTS, ObjectSpec, Scene, SHAPES
from vlit_ros.sim.tasks import FAMILIES, GOTO_TEMPLATES, load_instructions, SHAPE_WORDS
from vlit_ros.sim.world import World
from vlit_ros.training import captions
from vlit_ros.training.datagen import check_expert_labels, GenDataConfig, generate
from vlit_ros.training.datasets import (attribute_class, ATTRIBUTE_CLASSES,
                                        concatenate_releasing, grounding_labels,
                                        grounding_queries, IGNORE_LABEL, NO_BOX, object_boxes,
                                        patch_attribute_labels, QUERY_SPAN, scene_object_boxes,
                                        target_boxes)
from vlit_ros.training.phrasings import (goto_reference, GotoParaphraser, other_family_words,
                                         PARAPHRASE_GOTO_TEMPLATES, phrasing_words,
                                         tokenizer_words,
                                         training_instruction, unseen_goto_instructions,
                                         UNSEEN_GOTO_SEED, UNSEEN_GOTO_TEMPLATES,
                                         uses_template)
from vlit_ros.training.shards import iter_shards

ROOT = Path(__file__).resolve().parents[1]
TINY = GenDataConfig(caption_scenes=3, views_per_scene=4, trajectory_scenes=3,
                     episodes_per_scene=2, scenes_per_shard=2, noise=0.2)


def _scene():
    # Robot at the origin facing +x; objects ahead-left (near), far right, and behind.
    return Scene(seed=0, objects=(ObjectSpec('cube', 'red', 1.0, 0.6, 0.2),
                                  ObjectSpec('sphere', 'blue', 3.6, -1.5, 0.2),
                                  ObjectSpec('cylinder', 'green', -2.0, 0.0, 0.2)))


def test_concatenate_releasing_matches_numpy_and_lets_go_of_the_parts():
    rng = np.random.default_rng(0)
    parts = [rng.integers(0, 256, (n, 3, 2), np.uint8) for n in (4, 0, 7, 1)]
    expected = np.concatenate(parts)
    held = list(parts)
    out = concatenate_releasing(held)
    assert held == [] and out.dtype == np.uint8
    np.testing.assert_array_equal(out, expected)
    assert concatenate_releasing([np.arange(3), np.arange(2.0)]).dtype == np.float64
    with pytest.raises(ValueError, match='shapes'):
        concatenate_releasing([np.zeros((2, 3)), np.zeros((2, 4))])
    with pytest.raises(ValueError, match='nothing'):
        concatenate_releasing([])


def test_caption_lists_visible_objects_left_to_right():
    scene = _scene()
    seen = captions.visible_objects(scene, (0.0, 0.0, 0.0))
    assert [(o.color, o.side, o.range_word) for o in seen] == \
        [('red', 'on the left', 'close'), ('blue', 'on the right', 'far')]
    assert captions.caption(seen) == 'a red cube close on the left, a blue sphere far on the right'
    turned = captions.visible_objects(scene, (0.0, 0.0, math.pi))
    assert captions.caption(turned) == 'a green cylinder ahead'
    assert captions.caption(captions.visible_objects(scene, (0.0, 0.0, math.pi / 2))) == \
        captions.EMPTY_VIEW


def test_hidden_object_is_not_mentioned():
    scene = Scene(seed=0, objects=(ObjectSpec('cube', 'red', 1.0, 0.0, 0.3),
                                   ObjectSpec('sphere', 'blue', 3.0, 0.0, 0.2),
                                   ObjectSpec('cylinder', 'green', 3.0, 2.5, 0.2)))
    assert [o.color for o in captions.visible_objects(scene, (0.0, 0.0, 0.0))] == \
        ['green', 'red']


def _pixels_of(image, rgb):
    distance = np.abs(image.astype(np.int32) - np.array(rgb) * 255).sum(-1)
    rows, cols = np.nonzero(distance < 90)
    height, width = image.shape[:2]
    return (cols.min() / width, (cols.max() + 1) / width, rows.min() / height,
            (rows.max() + 1) / height)


def test_image_box_bounds_the_object_in_the_rendered_image():
    scene = _scene()
    with World(scene=scene) as world:
        image = world.render()
    for obj in scene.objects[:2]:
        box = captions.image_box(scene, (0.0, 0.0, 0.0), obj)
        seen = _pixels_of(image, COLORS[obj.color])
        tolerance = 2.0 / 96
        assert box[0] - tolerance <= seen[0] and seen[1] <= box[1] + tolerance
        assert box[2] - tolerance <= seen[2] and seen[3] <= box[3] + tolerance
        # Generous, but not by much: at most twice the rendered extent across.
        assert box[1] - box[0] <= 2.0 * (seen[1] - seen[0])
    left = captions.image_box(scene, (0.0, 0.0, 0.0), scene.objects[0])
    right = captions.image_box(scene, (0.0, 0.0, 0.0), scene.objects[1])
    assert left[1] < 0.5 < right[0]
    # Nearer objects reach lower in the image.
    assert left[3] > right[3]
    assert captions.image_box(scene, (0.0, 0.0, 0.0), scene.objects[2]) is None


def test_grounding_labels_cover_the_target_box_patch_by_patch():
    boxes = np.array([NO_BOX, (0.0, 0.25, 0.5, 1.0), (0.1, 0.2, 0.0, 1.0 / 6)], np.float32)
    labels = grounding_labels(boxes, (6, 8)).reshape(3, 6, 8)
    assert not labels[0].any()
    expected = np.zeros((6, 8))
    expected[3:, :2] = 1.0
    np.testing.assert_allclose(labels[1], expected, atol=1e-6)
    np.testing.assert_allclose(labels[2][0, :2], [0.2, 0.6], atol=1e-5)
    assert labels[2][1:].sum() == 0.0
    # Only goto frames name an object; the named object's box is where image_box puts it.
    scene = Scene.generate(TRAINING_SEED_BASE)
    target = scene.objects[0]
    pose = np.array([[scene.robot_x, scene.robot_y, scene.robot_yaw]], np.float32)
    goto = {'seed': scene.seed, 'task': {'type': 'goto', 'color': target.color,
                                         'shape': target.shape}}
    expected_box = captions.image_box(scene, tuple(float(v) for v in pose[0]), target)
    got = target_boxes(goto, pose)[0]
    if expected_box is None:
        assert tuple(got) == NO_BOX
    else:
        np.testing.assert_allclose(got, expected_box, atol=1e-6)
    turn = {'seed': scene.seed, 'task': {'type': 'turn', 'angle_deg': 90.0}}
    assert not target_boxes(turn, pose).any()


def test_presence_labels_mark_a_far_object_as_present_on_its_patch():
    boxes = np.array([NO_BOX, (0.30, 0.34, 0.50, 0.56), (0.12, 0.14, 0.50, 0.52),
                      (0.0, 0.25, 0.5, 1.0)], np.float32)
    coverage = grounding_labels(boxes, (6, 8)).reshape(4, 6, 8)
    presence = grounding_labels(boxes, (6, 8), 'presence').reshape(4, 6, 8)
    assert not presence[0].any()
    # A far object inside one patch: coverage labels it by its size, presence by being there.
    assert coverage[1].max() < 0.15 and presence[1][3, 2] == 1.0
    assert np.count_nonzero(presence[1]) == 1
    # Straddling two patches: split by where it is, a quarter and three quarters.
    np.testing.assert_allclose(presence[2][3, :2], [0.25, 0.75], atol=1e-5)
    assert np.count_nonzero(presence[2]) == 2
    # Large boxes are labelled the same either way.
    np.testing.assert_allclose(presence[3], coverage[3], atol=1e-6)
    with pytest.raises(ValueError, match='presence'):
        grounding_labels(boxes, (6, 8), 'centre')


def test_a_hidden_target_has_no_box():
    scene = Scene(seed=0, objects=(ObjectSpec('cube', 'red', 1.0, 0.0, 0.3),
                                   ObjectSpec('sphere', 'blue', 3.0, 0.0, 0.2)))
    pose = np.zeros((1, 3), np.float32)
    hidden = {'seed': 0, 'task': {'type': 'goto', 'color': 'blue', 'shape': 'sphere'}}
    front = {'seed': 0, 'task': {'type': 'goto', 'color': 'red', 'shape': 'cube'}}
    with mock.patch.object(Scene, 'generate', return_value=scene):
        assert not target_boxes(hidden, pose).any()
        assert target_boxes(front, pose).any()


def test_relabelled_grounding_queries_name_other_objects_with_their_own_boxes():
    # A goto episode driving straight at its target, as the expert ends one.
    scene = Scene.generate(TRAINING_SEED_BASE + 7)
    target = scene.objects[0]
    start = np.array([scene.robot_x, scene.robot_y])
    heading = math.atan2(target.y - start[1], target.x - start[0])
    steps = np.linspace(0.0, 1.0, 60)[:, None]
    end = np.array([target.x, target.y]) - 0.6 * np.array([math.cos(heading),
                                                           math.sin(heading)])
    poses = np.concatenate([start + steps * (end - start),
                            np.full((60, 1), heading)], 1).astype(np.float32)
    episode = {'seed': scene.seed, 'first_frame': 0, 'text': 'go to the thing',
               'task': {'type': 'goto', 'color': target.color, 'shape': target.shape}}
    texts, boxes, classes = grounding_queries(episode, poses)
    again = grounding_queries(episode, poses)
    assert texts == again[0] and np.array_equal(boxes, again[1]) and \
        np.array_equal(classes, again[2])
    assert len(texts) == 60 and boxes.shape == (60, 4)
    named = set()
    for start_row in range(0, 60, QUERY_SPAN):
        span = slice(start_row, start_row + QUERY_SPAN)
        text = texts[start_row]
        assert set(texts[span]) == {text}
        assert any(uses_template(text, template) for template in GOTO_TEMPLATES)
        # the text names exactly the object whose boxes label the span
        matches = [o for o in scene.objects
                   if np.array_equal(boxes[span], object_boxes(scene, o, poses[span]))
                   and (o.color in text or o.color == 'purple' and 'violet' in text or
                        any(word in text.split() for word in SHAPE_WORDS[o.shape]))]
        assert matches, text
        # the query's attribute class is the named object's
        assert set(classes[span]) == {attribute_class(matches[0])}
        named.update(o.name for o in matches)
    # Other objects are asked about too, so close to the target some views are negatives for
    # the query while the target fills the view.
    assert named - {target.name}
    close = target_boxes(episode, poses).any(1) & ~boxes.any(1)
    assert close.any()


def test_hard_negatives_change_one_attribute_and_are_false():
    scene = _scene()
    seen = captions.visible_objects(scene, (0.0, 0.0, 0.0))
    truth = captions.caption(seen)
    rng = random.Random(0)
    kinds = set()
    for _ in range(60):
        negative, kind = captions.hard_negative(seen, rng)
        kinds.add(kind)
        assert negative != truth
        differing = [a for a, b in zip(negative.split(', '), truth.split(', ')) if a != b]
        assert len(differing) == 1
    assert kinds == set(captions.NEGATIVE_KINDS)
    assert captions.hard_negative([], rng)[1] == 'object'


def _files(root: Path):
    return {p.relative_to(root): p.read_bytes() for p in sorted(root.rglob('shard_*'))}


def test_gen_data_is_deterministic_and_resumable(tmp_path):
    manifest = generate(tmp_path / 'a', TINY, workers=1, progress=False)
    assert manifest['complete']
    assert manifest['counts']['caption_views'] == 12
    assert manifest['counts']['trajectory_episodes'] == 6
    assert manifest['seed_ranges']['captions'][0] >= TRAINING_SEED_BASE
    first = _files(tmp_path / 'a')
    assert len(first) == 8  # 2 caption + 2 trajectory shards, 2 files each
    # Resume after losing one shard: only that shard is rebuilt, identically.
    lost = tmp_path / 'a' / 'trajectories' / 'shard_00001.json'
    lost.unlink()
    kept = tmp_path / 'a' / 'captions' / 'shard_00000.safetensors'
    mtime = kept.stat().st_mtime_ns
    generate(tmp_path / 'a', TINY, workers=1, progress=False)
    assert kept.stat().st_mtime_ns == mtime
    assert _files(tmp_path / 'a') == first
    with pytest.raises(ValueError, match='another configuration'):
        generate(tmp_path / 'a', GenDataConfig(caption_scenes=5), progress=False)
    # A directory made before a setting existed reads that setting as its default ...
    manifest_path = tmp_path / 'a' / 'manifest.json'
    old = json.loads(manifest_path.read_text())
    del old['config']['expert_far_search']
    manifest_path.write_text(json.dumps(old))
    generate(tmp_path / 'a', TINY, workers=1, progress=False)
    assert _files(tmp_path / 'a') == first
    # ... so it is refused for data labelled another way.
    with pytest.raises(ValueError, match='another configuration'):
        generate(tmp_path / 'a', replace(TINY, expert_far_search=True), progress=False)
    # DAgger's expert must be the one that labelled the data (directories without a gen-data
    # manifest are not asked).
    check_expert_labels([tmp_path / 'a', tmp_path], ExpertRules())
    for other in (ExpertRules(far_search=True), ExpertRules(observable_turns=True),
                  ExpertRules(short_sweep=True), ExpertRules(far_arcs=True),
                  ExpertRules(far_arcs=True, clear_arcs=True)):
        with pytest.raises(ValueError, match='exactly when gen-data had them'):
            check_expert_labels([tmp_path / 'a'], other)
    turns = replace(TINY, expert_observable_turns=True)
    generate(tmp_path / 'b', turns, workers=1, progress=False)
    check_expert_labels([tmp_path / 'b'], ExpertRules(observable_turns=True))
    with pytest.raises(ValueError, match='exactly when gen-data had them'):
        check_expert_labels([tmp_path / 'b'], ExpertRules())
    # A directory made before the setting existed was labelled with the default turns.
    del old['config']['expert_observable_turns']
    del old['config']['expert_short_sweep']
    del old['config']['expert_far_arcs']
    del old['config']['expert_clear_arcs']
    manifest_path.write_text(json.dumps(old))
    check_expert_labels([tmp_path / 'a'], ExpertRules())


def _children(pid):
    found = []
    for stat in Path('/proc').glob('[0-9]*/stat'):
        try:
            fields = stat.read_text().rsplit(')', 1)[1].split()
        except (OSError, IndexError):
            continue
        if int(fields[1]) == pid:
            found.append(int(stat.parent.name))
    return found


def _running(pid):
    try:
        state = Path(f'/proc/{pid}/stat').read_text().rsplit(')', 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state not in ('Z', 'X')


def test_gen_data_workers_exit_when_their_parent_is_killed(tmp_path):
    # A SIGKILLed gen-data (an out-of-memory kill) used to leave its pool workers waiting
    # forever on a queue nobody would close.
    command = [sys.executable, '-m', 'vlit_ros.cli', 'gen-data', '--out', str(tmp_path / 'd'),
               '--caption-scenes', '200', '--trajectory-scenes', '200',
               '--scenes-per-shard', '1', '--workers', '2', '--quiet']
    parent = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    workers = []
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and parent.poll() is None:
        workers = [pid for pid in _children(parent.pid)
                   if b'resource_tracker' not in Path(f'/proc/{pid}/cmdline').read_bytes()]
        if len(workers) >= 2 and any((tmp_path / 'd' / 'captions').glob('*.json')):
            break
        time.sleep(0.2)
    assert parent.poll() is None and len(workers) >= 2, 'gen-data never started its workers'
    os.kill(parent.pid, signal.SIGKILL)
    parent.wait()
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline and any(_running(pid) for pid in workers):
        time.sleep(0.2)
    left = [pid for pid in workers if _running(pid)]
    for pid in left:
        os.kill(pid, signal.SIGKILL)
    assert not left, f'workers {left} outlived their killed parent'


def test_gen_data_shards_hold_consistent_records(tmp_path):
    generate(tmp_path, TINY, workers=1, progress=False)
    for arrays, meta in iter_shards(tmp_path, 'captions'):
        assert arrays['image'].shape[1:] == (96, 128, 3)
        assert len(meta['captions']) == len(meta['negatives']) == arrays['image'].shape[0]
    families = set()
    perturbed = 0
    for arrays, meta in iter_shards(tmp_path, 'trajectories'):
        frames = arrays['step'].shape[0]
        assert arrays['image'].shape == (frames, 96, 128, 3)
        assert arrays['odom'].shape == (frames, 5)
        for episode in meta['episodes']:
            families.add(episode['family'])
            span = slice(episode['first_frame'], episode['first_frame'] + episode['frames'])
            assert np.array_equal(arrays['step'][span], np.arange(episode['frames']))
            assert (arrays['episode'][span] == episode['episode']).all()
        perturbed += int((arrays['expert_action'] != arrays['taken_action']).sum())
    assert families == set(FAMILIES)
    assert perturbed > 0


def test_unseen_goto_file_matches_its_builder_and_scenes():
    path = ROOT / 'test' / 'data' / 'goto_unseen.jsonl'
    lines = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    assert lines == [i.to_dict() for i in unseen_goto_instructions()]
    for index, instruction in enumerate(load_instructions(path)[:40]):
        instruction.task.target(Scene.generate(UNSEEN_GOTO_SEED + index))


def test_training_instructions_never_use_unseen_phrasings():
    texts = set()
    for seed in range(TRAINING_SEED_BASE, TRAINING_SEED_BASE + 300):
        scene = Scene.generate(seed)
        rng = random.Random(seed)
        for family in FAMILIES:
            texts.add(training_instruction(scene, family, rng).text)
    assert not any(uses_template(t, u) for t in texts for u in UNSEEN_GOTO_TEMPLATES)
    unseen = {i.text for i in unseen_goto_instructions()}
    assert not texts & unseen


def test_goto_reference_takes_the_most_specific_training_template():
    assert goto_reference('go to the red cube now') == 'red cube'
    assert goto_reference('um go to the uh violet ball') == 'violet ball'
    assert goto_reference('the blue one') == 'blue one'
    assert goto_reference('go toward the green can and stop there') == 'green can'
    assert goto_reference('turn left') is None
    assert goto_reference('make your way to the red cube') is None


def test_paraphrases_keep_the_name_and_never_use_unseen_words():
    paraphraser = GotoParaphraser(tokenizer_words())
    unseen_only = phrasing_words(UNSEEN_GOTO_TEMPLATES) - phrasing_words(GOTO_TEMPLATES) - \
        other_family_words()
    assert 'proceed' in unseen_only and 'travel' in unseen_only
    assert not phrasing_words(PARAPHRASE_GOTO_TEMPLATES) & unseen_only
    assert not set(paraphraser.words) & (unseen_only | other_family_words())
    assert not {'red', 'violet', 'ball', 'balls', 'cubes', 'stops', 'left'} & \
        set(paraphraser.words)
    rng = np.random.default_rng(0)
    outputs = [paraphraser('go to the violet ball now', rng) for _ in range(200)]
    assert all('violet ball' in text for text in outputs)
    assert len(set(outputs)) > 150, 'rephrasings should vary'
    assert not any(uses_template(t, u) for t in outputs for u in UNSEEN_GOTO_TEMPLATES)
    # Half new phrasings, half random words; other families are never rephrased.
    templated = sum(any(text == t.format(ref='violet ball') for t in PARAPHRASE_GOTO_TEMPLATES)
                    for text in outputs)
    assert 60 < templated < 140
    assert paraphraser('turn left 90 degrees', rng) == 'turn left 90 degrees'
    with pytest.raises(ValueError, match='no usable word'):
        GotoParaphraser(['red', 'Cube', '123', 'stop'])


def test_attribute_classes_name_each_colour_and_shape_pair_once():
    kinds = {attribute_class(ObjectSpec(shape, color, 0.0, 0.0, 0.2))
             for color in COLORS for shape in SHAPES}
    assert kinds == set(range(1, ATTRIBUTE_CLASSES))


def test_scene_object_boxes_order_objects_farthest_first_and_label_patches():
    scene = Scene.generate(TRAINING_SEED_BASE + 11)
    pose = np.array([[scene.robot_x, scene.robot_y, scene.robot_yaw]], np.float32)
    boxes, classes = scene_object_boxes(scene, pose)
    assert boxes.shape == (1, MAX_OBJECTS, 4) and classes.shape == (1, MAX_OBJECTS)
    seen = [(o, object_boxes(scene, o, pose)[0]) for o in scene.objects]
    seen = [(o, box) for o, box in seen if box.any()]
    assert seen, 'the start view should show an object'
    assert int((classes[0] > 0).sum()) == len(seen)
    # each visible object's own box, with its class, farthest first; empty slots after
    by_class = {attribute_class(o): box for o, box in seen}
    distances = []
    for slot in range(len(seen)):
        assert np.allclose(boxes[0, slot], by_class[int(classes[0, slot])])
        obj = next(o for o in scene.objects if attribute_class(o) == classes[0, slot])
        distances.append(math.hypot(obj.x - pose[0, 0], obj.y - pose[0, 1]))
    assert distances == sorted(distances, reverse=True)
    assert not boxes[0, len(seen):].any() and not classes[0, len(seen):].any()
    labels = patch_attribute_labels(boxes, classes, (6, 8))
    assert labels.shape == (1, 48)
    assert set(np.unique(labels)) <= {IGNORE_LABEL, 0} | set(by_class)
    assert (labels > 0).any() and (labels == 0).any()


def test_patch_attribute_labels_give_the_nearer_object_and_ignore_slivers():
    grid = (2, 2)
    # slot 0 (farther) covers the left half; slot 1 (nearer) the top-left patch only, and a
    # sliver of the top-right patch
    boxes = np.array([[[0.0, 0.5, 0.0, 1.0], [0.0, 0.6, 0.0, 0.5]]], np.float32)
    classes = np.array([[3, 7]])
    labels = patch_attribute_labels(boxes, classes, grid)
    # patches row by row: top-left, top-right, bottom-left, bottom-right
    assert labels.tolist() == [[7, IGNORE_LABEL, 3, 0]]
    # an empty slot (class 0) labels nothing, whatever its box
    empty = patch_attribute_labels(boxes, np.array([[0, 0]]), grid)
    assert empty.tolist() == [[0, 0, 0, 0]]


def test_shard_labels_are_remembered_by_content_and_equal_a_fresh_computation(tmp_path):
    from vlit_ros.training import datasets
    generate(tmp_path, TINY, workers=1, progress=False)
    arrays, meta = next(iter_shards(tmp_path, 'trajectories'))
    datasets._LABEL_MEMO.clear()
    first = datasets.shard_labels(meta['episodes'], arrays['pose'], True)
    with mock.patch.object(datasets, 'scene_object_boxes',
                           side_effect=AssertionError('recomputed')):
        again = datasets.shard_labels(meta['episodes'], arrays['pose'], True)
    assert again is first
    # Remembered labels cannot be changed by whoever holds them.
    with pytest.raises(ValueError, match='read-only'):
        first.target_box[0] = 1.0
    # Other poses, or labels without every object's boxes, are computed anew.
    moved = arrays['pose'].copy()
    moved[:, 0] += 0.5
    assert datasets.shard_labels(meta['episodes'], moved, True) is not first
    without = datasets.shard_labels(meta['episodes'], arrays['pose'], False)
    assert without.object_box.shape[1] == 0
    assert np.array_equal(without.target_box, first.target_box)
    datasets._LABEL_MEMO.clear()
    fresh = datasets.shard_labels(meta['episodes'], arrays['pose'], True)
    for name in ('auxiliary', 'auxiliary_mask', 'target_box', 'query_box', 'query_class',
                 'object_box', 'object_class'):
        assert np.array_equal(getattr(fresh, name), getattr(first, name)), name
    assert fresh.query_texts == first.query_texts
    episode = meta['episodes'][0]
    span = slice(episode['first_frame'], episode['first_frame'] + episode['frames'])
    assert np.array_equal(fresh.target_box[span], target_boxes(episode, arrays['pose'][span]))
