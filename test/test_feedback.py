"""
`vlit-ros feedback`: the key mapping, the session, and the command over real rclpy.

The end-to-end tests run the command as a process on a ROS_DOMAIN_ID of its own with
localhost-only discovery, and listen from a fresh rclpy Context in the test process.
"""

import os
import pty
import random
import select
import signal
import subprocess
import sys
import termios
import threading
import time

import pytest
import rclpy
from rclpy.context import Context
from rclpy.executors import SingleThreadedExecutor
from std_msgs.msg import Bool, Float32, String

from vlit_ros import feedback
from vlit_ros.feedback import (DOWN, ESTOP_TOPIC, Feedback, QUIT, REWARD_TOPIC, SPEECH_TOPIC,
                               UP)
from vlit_ros.qos import COMMAND_QOS, STREAM_QOS

COMMAND = [sys.executable, '-m', 'vlit_ros.cli', 'feedback']
# Discovery and process start-up on a loaded 2-core machine can take seconds.
STARTUP_S = 15.0


def _ros_env(domain):
    env = dict(os.environ, ROS_DOMAIN_ID=str(domain), PYTHONUNBUFFERED='1',
               ROS_AUTOMATIC_DISCOVERY_RANGE='LOCALHOST')
    env.pop('ROS_LOCALHOST_ONLY', None)
    return env


@pytest.mark.parametrize('key, expected', [
    ('+', Feedback(REWARD_TOPIC, 2.5)),
    ('=', Feedback(REWARD_TOPIC, 2.5)),
    ('p', Feedback(REWARD_TOPIC, 2.5)),
    ('P', Feedback(REWARD_TOPIC, 2.5)),
    (UP, Feedback(REWARD_TOPIC, 2.5)),
    ('-', Feedback(REWARD_TOPIC, -2.5)),
    ('n', Feedback(REWARD_TOPIC, -2.5)),
    (DOWN, Feedback(REWARD_TOPIC, -2.5)),
    ('s', Feedback(SPEECH_TOPIC, 'stop')),
    (' ', Feedback(SPEECH_TOPIC, 'stop')),
    ('e', Feedback(ESTOP_TOPIC, True)),
    ('q', QUIT),
    ('\x03', QUIT),
    ('\x04', QUIT),
])
def test_every_documented_key(key, expected):
    assert feedback.feedback_for_key(key, 2.5, estop_engaged=False) == expected


def test_e_toggles_the_estop():
    assert feedback.feedback_for_key('e', 1.0, estop_engaged=False) == \
        Feedback(ESTOP_TOPIC, True)
    assert feedback.feedback_for_key('e', 1.0, estop_engaged=True) == \
        Feedback(ESTOP_TOPIC, False)


@pytest.mark.parametrize('key', ['x', 'S ', '\x1b', '\x1b[C', '\t', '\n', '', 'stop', 'quit'])
def test_unknown_keys_publish_nothing(key):
    assert feedback.feedback_for_key(key, 1.0, estop_engaged=False) is None


@pytest.mark.parametrize('line, expected', [
    ('+\n', Feedback(REWARD_TOPIC, 1.0)),
    ('-\n', Feedback(REWARD_TOPIC, -1.0)),
    ('  STOP \n', Feedback(SPEECH_TOPIC, 'stop')),
    ('estop', Feedback(ESTOP_TOPIC, True)),
    ('release', Feedback(ESTOP_TOPIC, False)),
    ('quit', QUIT),
    ('p', Feedback(REWARD_TOPIC, 1.0)),
    ('n', Feedback(REWARD_TOPIC, -1.0)),
    ('s', Feedback(SPEECH_TOPIC, 'stop')),
    ('q', QUIT),
])
def test_every_documented_line(line, expected):
    assert feedback.feedback_for_line(line, 1.0, estop_engaged=False) == expected


def test_an_estop_line_is_explicit_and_e_toggles():
    for engaged in (False, True):
        assert feedback.feedback_for_line('estop', 1.0, engaged).value is True
        assert feedback.feedback_for_line('release', 1.0, engaged).value is False
    assert feedback.feedback_for_line('e', 1.0, estop_engaged=True).value is False


@pytest.mark.parametrize('line', ['x', 'up', 'down', 'stopp', '++', 'go to the red cube', ''])
def test_unknown_lines_publish_nothing(line):
    assert feedback.feedback_for_line(line, 1.0, estop_engaged=False) is None


def test_terminal_input_decodes_into_keys():
    assert feedback.decode_keys(b'+\x1b[A\x1b[Bq') == ['+', UP, DOWN, 'q']
    assert feedback.decode_keys(b'\x1bOA\x1bOB') == [UP, DOWN]
    assert feedback.decode_keys(b'\x1b[C \x1b') == ['\x1b[C', ' ', '\x1b']
    assert feedback.decode_keys(b'\x1b[1;5A') == ['\x1b[1;5A']


def test_session_counts_rewards_and_reports_the_estop_it_leaves():
    sent, lines = [], []
    session = feedback.Session(lambda f: sent.append(f) or 1, 1.0, echo=lines.append)
    assert session.key('+') and session.key(UP) and session.key('-')
    assert session.key('z')
    assert session.key('e')
    assert sent == [Feedback(REWARD_TOPIC, 1.0), Feedback(REWARD_TOPIC, 1.0),
                    Feedback(REWARD_TOPIC, -1.0), Feedback(ESTOP_TOPIC, True)]
    assert lines[2].endswith('[+2 / -1]')
    assert lines[3].startswith("unknown key 'z'")
    assert 'ENGAGED' in lines[4]
    assert 'estop left ENGAGED' in session.farewell()
    assert session.key('e') and sent[-1] == Feedback(ESTOP_TOPIC, False)
    assert 'estop left released' in session.farewell()
    assert not session.key('q')
    assert len(sent) == 5

    untouched = feedback.Session(lambda f: 0, 1.0, echo=lines.append)
    assert untouched.line('  \n') and untouched.line('stop')
    assert lines[-1].startswith("speech/text: 'stop' (no subscriber heard it)")
    assert 'estop not touched' in untouched.farewell()
    assert untouched.line('hello') and lines[-1].startswith("unknown input 'hello'")
    assert not untouched.line('quit')


class Listener:
    """A node in a fresh Context that records reward, speech/text and estop."""

    def __init__(self, domain):
        self.context = Context()
        rclpy.init(context=self.context, domain_id=domain)
        self.node = rclpy.create_node('feedback_test', context=self.context)
        self.lock = threading.Lock()
        self.received = {REWARD_TOPIC: [], SPEECH_TOPIC: [], ESTOP_TOPIC: []}
        for message_type, topic, qos in ((Float32, REWARD_TOPIC, STREAM_QOS),
                                         (String, SPEECH_TOPIC, COMMAND_QOS),
                                         (Bool, ESTOP_TOPIC, COMMAND_QOS)):
            self.node.create_subscription(message_type, topic,
                                          lambda msg, t=topic: self._record(t, msg.data), qos)
        self.executor = SingleThreadedExecutor(context=self.context)
        self.executor.add_node(self.node)
        self.spinner = threading.Thread(target=self.executor.spin, daemon=True)
        self.spinner.start()

    def _record(self, topic, value):
        with self.lock:
            self.received[topic].append(value)

    def wait_for(self, counts, timeout):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with self.lock:
                if all(len(self.received[t]) >= n for t, n in counts.items()):
                    break
            time.sleep(0.02)
        with self.lock:
            return {t: list(v) for t, v in self.received.items()}

    def close(self):
        self.executor.shutdown()
        self.node.destroy_node()
        rclpy.try_shutdown(context=self.context)


def test_piped_lines_reach_the_subscribers():
    domain = random.SystemRandom().randint(1, 100)
    listener = Listener(domain)
    try:
        # The command waits for a subscriber before its first message on each topic, so the
        # lines can go in at once.
        process = subprocess.run(COMMAND + ['--wait-for-subscriber', str(STARTUP_S)],
                                 input='+\n-\nwhat\nstop\nestop\nquit\n+\n', text=True,
                                 env=_ros_env(domain), stdout=subprocess.PIPE,
                                 stderr=subprocess.STDOUT, timeout=2 * STARTUP_S)
        out = process.stdout
        assert process.returncode == 0, out
        received = listener.wait_for({REWARD_TOPIC: 2, SPEECH_TOPIC: 1, ESTOP_TOPIC: 1}, 5.0)
    finally:
        listener.close()
    assert received == {REWARD_TOPIC: [1.0, -1.0], SPEECH_TOPIC: ['stop'],
                        ESTOP_TOPIC: [True]}, out
    assert "unknown input 'what'" in out
    assert '[+1 / -1]' in out
    assert 'no subscriber' not in out
    # Quitting leaves the estop engaged, and says so.
    assert out.rstrip().splitlines()[-1].startswith('quit after 1 + and 1 - rewards; '
                                                    'estop left ENGAGED')


def test_keys_at_a_terminal():
    # The command reads keys from a pseudo-terminal; the test keeps the terminal's end open
    # to look at its mode.
    controller, terminal = pty.openpty()
    process = subprocess.Popen(COMMAND, stdin=terminal, stdout=terminal, stderr=terminal,
                               env=_ros_env(random.SystemRandom().randint(1, 100)))
    output = bytearray()

    def read_until(text, timeout=STARTUP_S):
        deadline = time.monotonic() + timeout
        while text not in output and time.monotonic() < deadline:
            if select.select([controller], [], [], 0.1)[0]:
                output.extend(os.read(controller, 4096))
        return text in output

    try:
        assert read_until(b'keys:'), output.decode()
        for key, shown in ((b'+', b'[+1 / -0]'), (b'\x1b[A', b'[+2 / -0]'),
                           (b'\x1b[B', b'[+2 / -1]'), (b'x', b"unknown key 'x'"),
                           (b' ', b"speech/text: 'stop'"), (b'e', b'ESTOP ENGAGED'),
                           (b'q', b'estop left ENGAGED')):
            os.write(controller, key)
            assert read_until(shown), output.decode()
            if key == b'+':
                assert not termios.tcgetattr(terminal)[3] & termios.ECHO  # keys not echoed
        assert process.wait(timeout=STARTUP_S) == 0, output.decode()
        assert termios.tcgetattr(terminal)[3] & termios.ECHO  # the terminal is restored
        assert termios.tcgetattr(terminal)[3] & termios.ICANON
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
        os.close(controller)
        os.close(terminal)
    assert b'reward: -1 (no subscriber heard it)   [+2 / -1]' in output


def test_a_signal_during_a_publish_is_held_until_it_ends():
    interrupt = feedback.InterruptOutsidePublish()
    with pytest.raises(KeyboardInterrupt):
        interrupt(signal.SIGTERM, None)
    sent = []
    with pytest.raises(KeyboardInterrupt):
        with interrupt.publishing():
            interrupt(signal.SIGINT, None)
            sent.append('message')
    assert sent == ['message']
    # Nothing pending afterwards: a publish without a signal ends normally.
    with interrupt.publishing():
        sent.append('another')
    assert sent == ['message', 'another']
