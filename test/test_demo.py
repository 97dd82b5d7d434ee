"""`vlit-ros demo`: a short run over real ROS 2 leaves the video, the plot and the table."""

import argparse
import json
from pathlib import Path
import subprocess
import sys

import imageio.v2 as imageio
from rich.console import Console
from test_sim_node import new_domain, ros_env

from vlit_ros import bringup, demo

POLICY = f'{Path(__file__).resolve().parent / "fixtures" / "follower_policies.py"}' \
    ':ForwardHalfMetre'


def test_short_demo_writes_video_plot_and_table(tmp_path):
    result = subprocess.run(
        [sys.executable, '-m', 'vlit_ros.cli', 'demo', '--episodes', '2', '--policy', POLICY,
         '--out', str(tmp_path), '--speed', '3', '--timeout', '150'],
        env=dict(ros_env(new_domain()), COLUMNS='200'), capture_output=True, text=True,
        timeout=200)
    assert result.returncode == 0, result.stdout + result.stderr
    out = result.stdout
    (run_dir,) = tmp_path.iterdir()
    results = json.loads((run_dir / 'results.json').read_text())
    assert results['episodes_total'] == 2 and results['policy'] == POLICY
    assert [e['family'] for e in results['episodes']] == ['goto', 'turn']
    # A live line per episode, then the table and the checks.
    for episode in results['episodes']:
        assert repr(episode['text']) in out
    assert 'mean time to success' in out and 'goto' in out and 'turn' in out
    assert 'robot stopped: the last cmd_vel was zero' in out
    assert 'frame -> cmd_vel in the follower: median' in out
    assert 'instruction_follower exited with 0' in out
    video = imageio.get_reader(run_dir / 'demo.mp4')
    frames = list(video.iter_data())
    steps = sum(e['steps'] for e in results['episodes'])
    # Camera beside top view; a frame per step (best effort: some may drop under load), plus
    # the verdict held after each episode.
    assert frames[0].shape == (332, 672, 3)
    assert steps // 2 + 2 * demo.VERDICT_FRAMES <= len(frames) <= \
        steps + 2 * (demo.VERDICT_FRAMES + 1)
    assert (run_dir / 'latency.png').stat().st_size > 10_000
    assert {p.name for p in (run_dir / 'logs').iterdir()} == \
        {'sim.log', 'task.log', 'instruction_follower.log'}


def test_without_a_checkpoint_the_fallback_is_announced(monkeypatch):
    console = Console(record=True, width=100)
    args = argparse.Namespace(policy=None, checkpoint=None)
    monkeypatch.setattr(bringup, 'shipped_checkpoint', lambda: None)
    assert demo._choose_policy(args, console) == ('random', '')
    assert 'expect low success rates' in console.export_text()
    monkeypatch.setattr(bringup, 'shipped_checkpoint', lambda: Path('/shipped'))
    assert demo._choose_policy(args, console) == ('model', '')
    args.policy = 'random'
    assert demo._choose_policy(args, console) == ('random', '')
