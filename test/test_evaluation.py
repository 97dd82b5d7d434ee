"""`vlit-ros eval`: the yardstick, its expert upper bound and its random lower bound."""

import json
import math
from pathlib import Path

import imageio.v2 as imageio
import pytest

from vlit_ros.cli import main
from vlit_ros.evaluation import evaluate
from vlit_ros.policies import RandomPolicy
from vlit_ros.sim.episode import EpisodeSpec, run_episode
from vlit_ros.sim.expert import ExpertPolicy
from vlit_ros.sim.scene import ObjectSpec, Scene
from vlit_ros.sim.tasks import FAMILIES, GotoTask, Instruction
from vlit_ros.sim.world import World

FIXTURES = Path(__file__).parent / 'fixtures'


@pytest.fixture(scope='module')
def expert_summary():
    return evaluate(ExpertPolicy(), episodes=400, seed=1, progress=False)


@pytest.mark.parametrize('family', FAMILIES)
def test_expert_solves_at_least_98_percent_per_family(expert_summary, family):
    row = expert_summary['per_family'][family]
    assert row['episodes'] == 100
    assert row['success_rate'] >= 0.98, row


def test_random_policy_solves_few():
    summary = evaluate(RandomPolicy(seed=0), episodes=80, seed=1, progress=False)
    assert summary['per_family']['goto']['success_rate'] <= 0.1
    assert summary['success_rate'] <= 0.3


def test_cli_writes_json_and_prints_the_table(tmp_path, capsys):
    out = tmp_path / 'eval.json'
    rc = main(['eval', '--policy', 'expert', '--episodes', '8', '--seed', '3', '--quiet',
               '--json', str(out)])
    assert rc == 0
    printed = capsys.readouterr().out
    assert 'goto' in printed and 'success' in printed
    data = json.loads(out.read_text())
    assert {'success_rate', 'per_family', 'episodes'} <= set(data)
    assert len(data['episodes']) == 8
    assert [e['seed'] for e in data['episodes']] == list(range(3, 11))
    assert set(data['per_family']) == set(FAMILIES)


def test_instruction_file_gives_identical_episodes_to_two_policies(tmp_path):
    path = tmp_path / 'instructions.jsonl'
    path.write_text('{"text": "spin around", "task": {"type": "turn", "angle_deg": 180}}\n'
                    '{"text": "halt", "task": {"type": "stop"}}\n')
    outs = []
    for policy in ('expert', 'random'):
        out = tmp_path / f'{policy}.json'
        assert main(['eval', '--policy', policy, '--episodes', '5', '--seed', '20',
                     '--instructions', str(path), '--quiet', '--json', str(out)]) == 0
        outs.append(json.loads(out.read_text())['episodes'])
    for a, b in zip(*outs):
        assert (a['seed'], a['text'], a['task']) == (b['seed'], b['text'], b['task'])
    assert [e['text'] for e in outs[0]] == ['spin around', 'halt'] * 2 + ['spin around']


def test_bad_instruction_file_is_a_clear_error(tmp_path, capsys):
    path = tmp_path / 'bad.jsonl'
    path.write_text('{"text": "halt", "task": {"type": "stop"}}\n{"text": "x"}\n')
    assert main(['eval', '--policy', 'expert', '--instructions', str(path)]) == 2
    assert 'bad.jsonl:2:' in capsys.readouterr().err


def test_goto_naming_a_missing_object_is_a_clear_error(tmp_path, capsys):
    path = tmp_path / 'missing.jsonl'
    lines = [json.dumps({'text': f'go to the {c} {s}',
                         'task': {'type': 'goto', 'color': c, 'shape': s}})
             for c in ('red', 'green') for s in ('cube', 'sphere', 'cylinder')]
    path.write_text('\n'.join(lines))
    assert main(['eval', '--policy', 'expert', '--instructions', str(path), '--episodes',
                 '6', '--quiet']) == 2
    assert 'has no' in capsys.readouterr().err


def test_plugin_policy_and_bad_plugins(tmp_path, capsys):
    plugin = f'{FIXTURES / "forward_policy.py"}:AlwaysForward'
    assert main(['eval', '--policy', plugin, '--episodes', '4', '--quiet']) == 0
    assert main(['eval', '--policy', f'{FIXTURES / "forward_policy.py"}:Missing']) == 2
    assert main(['eval', '--policy', f'{FIXTURES / "forward_policy.py"}:NeedsArguments']) == 2
    assert main(['eval', '--policy', 'telepathy']) == 2
    err = capsys.readouterr().err
    assert 'defines no' in err and 'no arguments' in err and 'unknown policy' in err


def test_video_is_written_and_playable(tmp_path):
    videos = tmp_path / 'videos'
    assert main(['eval', '--policy', 'expert', '--episodes', '2', '--seed', '5',
                 '--families', 'turn', '--quiet', '--video', str(videos)]) == 0
    files = sorted(videos.glob('*.mp4'))
    assert len(files) == 2
    reader = imageio.get_reader(files[0])
    frame = reader.get_data(0)
    assert frame.shape[0] > 200 and frame.shape[1] > 500
    reader.close()


def test_shifted_world_and_unknown_family(capsys):
    assert main(['eval', '--policy', 'expert', '--episodes', '4', '--world', 'shifted',
                 '--quiet']) == 0
    assert main(['eval', '--policy', 'expert', '--families', 'dance']) == 2
    assert 'unknown families' in capsys.readouterr().err


class _OdometryPolicy:
    """Drives by odometry alone (no image), one robot or a batch: forward, then stop at 1 m."""

    def reset(self, instruction):
        self.reset_batch([instruction])

    largest = 0

    def reset_batch(self, instructions):
        self.robots = len(instructions)

    def act(self, obs):
        return self.act_batch([obs])[0]

    def act_batch(self, observations):
        assert len(observations) == self.robots
        self.largest = max(self.largest, len(observations))
        return ['forward' if obs.odom[0] < 1.0 else 'stop' for obs in observations]


def test_batched_evaluation_judges_every_episode_as_one_at_a_time():
    policy = _OdometryPolicy()
    one = evaluate(policy, 10, 3, progress=False, batch=1)
    batched = evaluate(policy, 10, 3, progress=False, batch=4)
    assert policy.largest == 4
    keys = ('index', 'seed', 'family', 'text', 'success', 'reason', 'steps', 'total_reward')
    assert [[e[k] for k in keys] for e in one['episodes']] == \
        [[e[k] for k in keys] for e in batched['episodes']]
    # Episodes of different families end in different ways and at different steps.
    assert len({e['reason'] for e in one['episodes']}) > 1
    assert len({e['steps'] for e in one['episodes']}) > 1
    with pytest.raises(ValueError, match='--batch must be at least 1'):
        evaluate(policy, 2, 3, progress=False, batch=0)


def _goto_scene(bearing_deg, blocker=False):
    """Build a scene: the robot at the origin facing +x, a red cube 3 m away at a bearing."""
    bearing = math.radians(bearing_deg)
    objects = [ObjectSpec('cube', 'red', round(3.0 * math.cos(bearing), 4),
                          round(3.0 * math.sin(bearing), 4), 0.2),
               ObjectSpec('sphere', 'blue', -2.5, 2.5, 0.2)]
    if blocker:
        # Right in the line of sight, so the cube is hidden from the start pose.
        objects.append(ObjectSpec('cylinder', 'green', round(1.5 * math.cos(bearing), 4),
                                  round(1.5 * math.sin(bearing), 4), 0.24))
    return Scene(seed=0, objects=tuple(objects))


def _first_actions(scene, observable_search=True, steps=5):
    task = GotoTask('red', 'cube')
    spec = EpisodeSpec(0, 0, 'goto', Instruction('go to the red cube', task), scene)
    expert = ExpertPolicy(observable_search=observable_search)
    with World() as world:
        result = run_episode(world, expert, spec)
    return result.actions[:steps], result.success


@pytest.mark.parametrize('bearing_deg', [-70.0, 70.0])
def test_expert_searches_for_an_unseen_target_the_way_a_camera_only_robot_can(bearing_deg):
    # Out of view on either side, the expert starts with the same sweep (left first): what
    # it does may depend only on what the learner could know, not on where the target is.
    actions, success = _first_actions(_goto_scene(bearing_deg))
    assert actions == ['turn_left'] * 5
    assert success
    # The privileged shortcut, for contrast, turns toward the target at once.
    actions, success = _first_actions(_goto_scene(bearing_deg), observable_search=False)
    assert actions[0] == ('turn_left' if bearing_deg > 0 else 'turn_right')
    assert success


def test_expert_drives_at_a_target_in_view_and_finds_a_hidden_one():
    actions, success = _first_actions(_goto_scene(10.0))
    assert actions[0] in ('forward', 'forward_left') and success
    expert = ExpertPolicy()
    scene = _goto_scene(0.0, blocker=True)
    with World() as world:
        world.reset(scene=scene)
        expert.reset('go to the red cube', task=GotoTask('red', 'cube'), world=world)
        assert not expert.target_in_view()
    assert _first_actions(scene)[1]
