"""
End-to-end latency of the instruction follower: camera frame -> cmd_vel, watchdog and estop.

Starts the follower as its own process (`python -m vlit_ros.nodes.instruction_follower`, with
`use_twist_stamped:=true`) and `bench/frame_replayer.py` as another, publishing synthetic
128 x 96 frames at 10 Hz stamped at publish time. The follower copies a frame's stamp into the
header of the TwistStamped it computes from that frame, so this process matches commands to
frames by stamp: latency = arrival of the first cmd_vel carrying a frame's stamp minus that
stamp (both the system clock of this machine; the cmd_vel hop is included, so the figure is an
upper bound of frame publish -> cmd_vel publish). It also reports the follower's own
frame-arrival -> publish time from `vlit/action`.

Then, with the robot driving: the watchdog (frames stop -> first zero command, from the last
frame's stamp; target <= 300 ms), the estop (estop=True -> first zero command; target <= one
control period) and a stop phrase ("halt" -> first zero command).

Policy: `--checkpoint DIR` runs the trained model (`vlit_ros.core.policy`); without one, the
`ConvWorkPolicy` plug-in below stands in: the same kind of work as the model at batch 1 (a CNN
over the frame, cross-attention from the instruction to 48 patch tokens, an MLP head, softmax)
and then it always drives forward, so the stop measurements have motion to stop.

    python bench/latency_e2e.py [--checkpoint DIR] [--device cpu] [--frames 200]
        [--json latency_e2e.json]
"""

import argparse
import importlib.util
import json
import os
from pathlib import Path
import random
import subprocess
import sys
import threading
import time
import zlib

from geometry_msgs.msg import TwistStamped
import numpy as np
import rclpy
from rclpy.context import Context
from rclpy.executors import SingleThreadedExecutor
from sensor_msgs.msg import Image
from std_msgs.msg import Bool, String

from vlit_ros.core.actions import ACTIONS
from vlit_ros.qos import COMMAND_QOS, IMAGE_QOS, STREAM_QOS

HERE = Path(__file__).resolve().parent
TARGETS_MS = {'frame_to_cmd_p95': 50.0, 'watchdog': 300.0, 'estop': 100.0}


class ConvWorkPolicy:
    """Stand-in for the model: real CNN + cross-attention + MLP work, then 'forward'."""

    def __init__(self):
        import torch
        from torch import nn
        torch.manual_seed(0)
        self._torch = torch
        width = 256
        self._encoder = nn.Sequential(
            nn.Conv2d(3, 32, 3, stride=2, padding=1), nn.ReLU(),
            nn.Conv2d(32, 64, 3, stride=2, padding=1), nn.ReLU(),
            nn.Conv2d(64, 128, 3, stride=2, padding=1), nn.ReLU(),
            nn.Conv2d(128, width, 3, stride=2, padding=1), nn.ReLU()).eval()
        self._text = nn.EmbeddingBag(4096, width).eval()
        self._attention = nn.MultiheadAttention(width, 4, batch_first=True).eval()
        self._head = nn.Sequential(nn.Linear(width + 5, width), nn.ReLU(),
                                   nn.Linear(width, len(ACTIONS))).eval()
        self._query = None
        self.last_probabilities = None

    def reset(self, instruction):
        ids = [zlib.crc32(word.encode()) % 4096 for word in instruction.lower().split()]
        with self._torch.no_grad():
            self._query = self._text(self._torch.tensor([ids]))[:, None, :]

    def act(self, obs):
        torch = self._torch
        with torch.no_grad():
            image = torch.from_numpy(obs.image).permute(2, 0, 1)[None].float() / 255.0
            tokens = self._encoder(image).flatten(2).transpose(1, 2)
            fused, _ = self._attention(self._query, tokens, tokens)
            odom = torch.tensor([obs.odom], dtype=torch.float32)
            logits = self._head(torch.cat([fused[:, 0], odom], dim=1))
            self.last_probabilities = torch.softmax(logits, dim=1)[0].tolist()
        return 'forward'


def percentiles(values):
    """Return count, median, p95 and max of `values` (ms; None = not seen), rounded."""
    values = [v for v in values if v is not None]
    if not values:
        return {'count': 0, 'median': None, 'p95': None, 'max': None}
    array = np.asarray(values, dtype=float)
    return {'count': int(array.size), 'median': round(float(np.median(array)), 2),
            'p95': round(float(np.percentile(array, 95)), 2),
            'max': round(float(array.max()), 2)}


def stamp_ns(stamp):
    return stamp.sec * 1_000_000_000 + stamp.nanosec


class Probe:
    """The measuring node: publishes instructions and estops, records commands and frames."""

    def __init__(self, domain):
        self.context = Context()
        rclpy.init(context=self.context, domain_id=domain)
        self.node = rclpy.create_node('latency_probe', context=self.context)
        self.lock = threading.Lock()
        self.commands = []  # (arrival ns, stamp ns, v, w)
        self.reports = []
        self.frame_stamps = []
        self.node.create_subscription(TwistStamped, 'cmd_vel', self._on_command, COMMAND_QOS)
        self.node.create_subscription(String, 'vlit/action', self._on_report, STREAM_QOS)
        self.node.create_subscription(Image, 'camera/image_raw', self._on_frame, IMAGE_QOS)
        self.speech = self.node.create_publisher(String, 'speech/text', COMMAND_QOS)
        self.estop = self.node.create_publisher(Bool, 'estop', COMMAND_QOS)
        self.executor = SingleThreadedExecutor(context=self.context)
        self.executor.add_node(self.node)
        self.thread = threading.Thread(target=self.executor.spin, daemon=True)
        self.thread.start()

    def _on_command(self, msg):
        arrival = time.time_ns()
        with self.lock:
            self.commands.append((arrival, stamp_ns(msg.header.stamp), msg.twist.linear.x,
                                  msg.twist.angular.z))

    def _on_report(self, msg):
        with self.lock:
            self.reports.append(json.loads(msg.data))

    def _on_frame(self, msg):
        with self.lock:
            self.frame_stamps.append(stamp_ns(msg.header.stamp))

    def wait_for(self, predicate, timeout):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with self.lock:
                if predicate():
                    return True
            time.sleep(0.005)
        return False

    def first_command_after(self, since_ns, predicate, timeout=3.0):
        found = []

        def check():
            found[:] = [c for c in self.commands if c[0] >= since_ns and predicate(c)][:1]
            return found
        self.wait_for(check, timeout)
        return found[0] if found else None

    def say(self, text):
        self.speech.publish(String(data=text))

    def close(self):
        self.executor.shutdown()
        self.node.destroy_node()
        rclpy.try_shutdown(context=self.context)


def start_replayer(env, count):
    # Two subscribers: the follower and the probe, which needs every frame's stamp.
    return subprocess.Popen([sys.executable, str(HERE / 'frame_replayer.py'), '--rate', '10',
                             '--count', str(count), '--subscribers', '2'], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def drive(probe, text='go to the red cube', timeout=10.0):
    since = time.time_ns()
    probe.say(text)
    return probe.first_command_after(since, lambda c: c[2] > 0.3, timeout) is not None


def measure(args, env):
    probe = Probe(int(env['ROS_DOMAIN_ID']))
    try:
        if not probe.wait_for(lambda: probe.commands, 60.0):
            raise RuntimeError('no cmd_vel from the follower within 60 s')
        probe.wait_for(lambda: probe.speech.get_subscription_count() > 0, 10.0)
        probe.say('go to the red cube')
        time.sleep(0.5)

        # Frame -> command latency, then the watchdog when the replayer runs out of frames.
        with probe.lock:
            probe.frame_stamps.clear()
        start_ns = time.time_ns()
        replayer = start_replayer(env, args.frames)
        replayer.wait(timeout=args.frames / 10.0 + 60.0)
        time.sleep(1.0)
        with probe.lock:
            frames = [s for s in probe.frame_stamps if s >= start_ns]
            commands = [c for c in probe.commands if c[0] >= start_ns]
            reports = [r for r in probe.reports if r.get('stamp')]
        first_arrival = {}
        for arrival, stamp, _, _ in commands:
            first_arrival.setdefault(stamp, arrival)
        frame_set = set(frames)
        e2e = [(first_arrival[s] - s) / 1e6 for s in frames if s in first_arrival]
        in_node = [r['latency_ms'] for r in reports
                   if stamp_ns_dict(r['stamp']) in frame_set]
        inference = [r['inference_ms'] for r in reports
                     if stamp_ns_dict(r['stamp']) in frame_set]
        watchdog = [watchdog_ms(probe, max(frames))] if frames else []

        # More watchdog trials: short bursts of frames.
        for _ in range(args.trials - 1):
            with probe.lock:
                probe.frame_stamps.clear()
            drive_start = time.time_ns()
            burst = start_replayer(env, 15)
            probe.first_command_after(drive_start, lambda c: c[2] > 0.3, 15.0)
            burst.wait(timeout=30)
            time.sleep(0.8)
            with probe.lock:
                last = max(probe.frame_stamps, default=None)
            if last is not None:
                watchdog.append(watchdog_ms(probe, last))

        # Estop and stop phrase, with frames streaming.
        estop, stop_phrase = [], []
        stream = start_replayer(env, 0)
        try:
            for _ in range(args.trials):
                if not drive(probe):
                    continue
                pressed = time.time_ns()
                probe.estop.publish(Bool(data=True))
                zero = probe.first_command_after(pressed, lambda c: c[2] == 0.0)
                if zero is not None:
                    estop.append((zero[0] - pressed) / 1e6)
                time.sleep(0.3)
                probe.estop.publish(Bool(data=False))
                time.sleep(0.2)
                if not drive(probe):
                    continue
                said = time.time_ns()
                probe.say('halt')
                zero = probe.first_command_after(said, lambda c: c[2] == 0.0)
                if zero is not None:
                    stop_phrase.append((zero[0] - said) / 1e6)
        finally:
            stream.terminate()
            stream.wait(timeout=10)
        return {
            'frames_published': len(frames),
            'frames_with_a_command': len(e2e),
            'frame_to_cmd_vel_ms': percentiles(e2e),
            'in_node_frame_to_publish_ms': percentiles(in_node),
            'inference_ms': percentiles(inference),
            'watchdog_ms': percentiles(watchdog),
            'estop_ms': percentiles(estop),
            'stop_phrase_ms': percentiles(stop_phrase),
        }
    finally:
        probe.close()


def stamp_ns_dict(stamp):
    return stamp['sec'] * 1_000_000_000 + stamp['nanosec']


def watchdog_ms(probe, last_frame_ns):
    zero = probe.first_command_after(last_frame_ns, lambda c: c[2] == 0.0)
    return None if zero is None else (zero[0] - last_frame_ns) / 1e6


def parse_args(argv):
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0].strip())
    parser.add_argument('--checkpoint', help='model checkpoint; default: ConvWorkPolicy')
    parser.add_argument('--device', default='cpu', help='torch device of the follower')
    parser.add_argument('--torch-threads', type=int, default=1,
                        help="the follower's torch_threads parameter (0: torch default)")
    parser.add_argument('--frames', type=int, default=200, help='frames for the latency run')
    parser.add_argument('--trials', type=int, default=5,
                        help='watchdog, estop and stop-phrase trials')
    parser.add_argument('--json', help='write the results here')
    args = parser.parse_args(argv)
    if args.frames < 10 or args.trials < 1 or args.torch_threads < 0:
        parser.error('need --frames >= 10, --trials >= 1 and --torch-threads >= 0')
    return args


def main(argv=None) -> int:
    """Run the benchmark, print a summary, and write JSON when asked."""
    args = parse_args(sys.argv[1:] if argv is None else argv)
    if args.checkpoint:
        if importlib.util.find_spec('vlit_ros.core.policy') is None:
            print('vlit_ros.core.policy is not available; cannot run the model',
                  file=sys.stderr)
            return 2
        policy = 'model'
        note = f'trained model from {args.checkpoint} on {args.device}'
        params = ['policy:=model', f'checkpoint:={args.checkpoint}', f'device:={args.device}']
    else:
        policy = f'{Path(__file__).resolve()}:ConvWorkPolicy'
        note = ('ConvWorkPolicy stand-in (CNN + cross-attention + MLP in torch, batch 1, '
                'CPU), NOT the trained model: pass --checkpoint to measure the model')
        params = [f'policy:={policy}']
    print(f'policy: {note}; torch_threads {args.torch_threads}; load average '
          f'{os.getloadavg()[0]:.2f} on {os.cpu_count()} CPUs')
    domain = random.SystemRandom().randint(1, 100)
    env = dict(os.environ, ROS_DOMAIN_ID=str(domain), ROS_AUTOMATIC_DISCOVERY_RANGE='LOCALHOST')
    env.pop('ROS_LOCALHOST_ONLY', None)
    os.environ.update(ROS_AUTOMATIC_DISCOVERY_RANGE='LOCALHOST')
    command = [sys.executable, '-m', 'vlit_ros.nodes.instruction_follower', '--ros-args',
               '-p', 'use_twist_stamped:=true', '-p', f'torch_threads:={args.torch_threads}',
               '--log-level', 'warn']
    for param in params:
        command += ['-p', param]
    follower = subprocess.Popen(command, env=env)
    try:
        results = measure(args, env)
    finally:
        follower.terminate()
        follower.wait(timeout=20)
    results = {'policy': policy, 'policy_note': note, 'device': args.device,
               'torch_threads': args.torch_threads, 'cpu_count': os.cpu_count(),
               'load_average': os.getloadavg(), 'targets_ms': TARGETS_MS, **results}
    results['meets_targets'] = {
        'frame_to_cmd_p95': _at_most(results['frame_to_cmd_vel_ms']['p95'],
                                     TARGETS_MS['frame_to_cmd_p95']),
        'watchdog': _at_most(results['watchdog_ms']['max'], TARGETS_MS['watchdog']),
        'estop': _at_most(results['estop_ms']['max'], TARGETS_MS['estop']),
    }
    print(f'frames published {results["frames_published"]}, with a command '
          f'{results["frames_with_a_command"]}')
    for key in ('frame_to_cmd_vel_ms', 'in_node_frame_to_publish_ms', 'inference_ms',
                'watchdog_ms', 'estop_ms', 'stop_phrase_ms'):
        stats = results[key]
        print(f'{key:30s} n={stats["count"]:4d} median={stats["median"]} p95={stats["p95"]} '
              f'max={stats["max"]}')
    print(f'targets {TARGETS_MS} met: {results["meets_targets"]}')
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2) + '\n')
    return 0


def _at_most(value, limit):
    return value is not None and value <= limit


if __name__ == '__main__':
    sys.exit(main())
