"""
`vlit-ros feedback`: a person teaches the robot from the keyboard.

A small node publishes what the person says on the topics the graph already listens to
(relative names, so `--namespace robot1` reaches `/robot1/reward` etc.):

| key | published | read by |
| --- | --- | --- |
| `+` `=` `p` Up | std_msgs/Float32 `+scale` on `reward` (STREAM_QOS) | trainer |
| `-` `n` Down | std_msgs/Float32 `-scale` on `reward` (STREAM_QOS) | trainer |
| `s` Space | std_msgs/String "stop" on `speech/text` (COMMAND_QOS) | instruction_follower |
| `e` | std_msgs/Bool on `estop`, True and False in turn (COMMAND_QOS) | follower, trainer |
| `q` Ctrl-C Ctrl-D | quit | |

At a terminal, keys act as they are pressed (the terminal is put in cbreak mode and restored
on exit). When stdin is not a terminal, it is read a line at a time, so feedback can be
scripted: `+`, `-`, `stop`, `estop` (True), `release` (False), `quit` (or end of input); a
line of one key character acts as that key. Unknown keys and lines print a hint and change
nothing.

Quitting never releases the estop: an engaged estop stays engaged (the last line says so),
and the robot stays stopped until someone publishes False on `estop` (`e` or `release` here).
The `e` toggle follows this session's own presses; the first press engages.

Piped input usually arrives before discovery has matched anyone, and a message published
then is lost, so before the first message on a topic without a subscriber this waits up to
`--wait-for-subscriber` seconds (default 5 for piped input, 0 at a keyboard) for one. Before
exiting it waits for every subscriber to acknowledge what was sent.
"""

import argparse
import contextlib
import math
import os
import re
import select
import signal
import sys
import termios
import time
import tty
from typing import Callable, Dict, Iterator, List, NamedTuple, Optional, Union

import rclpy
from rclpy.context import Context
from rclpy.duration import Duration
from rclpy.impl.implementation_singleton import rclpy_implementation as _rclpy
from rclpy.signals import SignalHandlerOptions
from std_msgs.msg import Bool, Float32, String

from vlit_ros.qos import COMMAND_QOS, STREAM_QOS

NODE_NAME = 'vlit_feedback'
REWARD_TOPIC = 'reward'
SPEECH_TOPIC = 'speech/text'
ESTOP_TOPIC = 'estop'
STOP_PHRASE = 'stop'
# What `decode_keys` calls the arrow keys.
UP = 'up'
DOWN = 'down'
CTRL_C = '\x03'  # a key only where the terminal does not turn it into SIGINT
CTRL_D = '\x04'  # end of input, a plain key in cbreak mode
PIPED_WAIT_S = 5.0
ACK_TIMEOUT_S = 2.0
# How long to wait for the rest of an escape sequence (arrow keys) split across reads.
ESCAPE_WAIT_S = 0.05

KEY_LEGEND = ('keys: + = p Up: reward +{scale:g} | - n Down: reward -{scale:g} | '
              's Space: say "stop" | e: estop on/off | q Ctrl-C: quit')
LINE_LEGEND = ('lines: + (reward +{scale:g}) | - (reward -{scale:g}) | stop | estop | '
               'release | quit')
KEY_HINT = 'use + or - to reward, s to say stop, e for the estop, q to quit'
LINE_HINT = 'use +, -, stop, estop, release or quit'


class Feedback(NamedTuple):
    """One message to publish: a relative topic name and its value; no topic means quit."""

    topic: Optional[str]
    value: Union[float, str, bool, None]


QUIT = Feedback(None, None)

_POSITIVE_KEYS = ('+', '=', 'p', UP)
_NEGATIVE_KEYS = ('-', 'n', DOWN)
_STOP_KEYS = ('s', ' ')
_ESTOP_KEYS = ('e',)
_QUIT_KEYS = ('q', CTRL_C, CTRL_D)
_ESCAPES = {'\x1b[A': UP, '\x1bOA': UP, '\x1b[B': DOWN, '\x1bOB': DOWN}
# A CSI sequence (ESC [ parameters intermediates final), an SS3 one (ESC O x), a lone ESC,
# or any other single character.
_KEY_PATTERN = re.compile(r'\x1b\[[0-?]*[ -/]*[@-~]|\x1bO.|.', re.DOTALL)
_INCOMPLETE_ESCAPE = re.compile(r'\x1b(\[[0-?]*[ -/]*|O)?$')


def feedback_for_key(key: str, scale: float, estop_engaged: bool) -> Optional[Feedback]:
    """
    Return what a key press publishes, QUIT, or None for an unknown key.

    `key` is one character or UP / DOWN; `estop_engaged` is the state `e` toggles.
    """
    key = key.lower()
    if key in _POSITIVE_KEYS:
        return Feedback(REWARD_TOPIC, scale)
    if key in _NEGATIVE_KEYS:
        return Feedback(REWARD_TOPIC, -scale)
    if key in _STOP_KEYS:
        return Feedback(SPEECH_TOPIC, STOP_PHRASE)
    if key in _ESTOP_KEYS:
        return Feedback(ESTOP_TOPIC, not estop_engaged)
    if key in _QUIT_KEYS:
        return QUIT
    return None


def feedback_for_line(line: str, scale: float, estop_engaged: bool) -> Optional[Feedback]:
    """Return what a line of piped input publishes, QUIT, or None for an unknown line."""
    word = line.strip().lower()
    by_word = {
        '+': Feedback(REWARD_TOPIC, scale),
        '-': Feedback(REWARD_TOPIC, -scale),
        'stop': Feedback(SPEECH_TOPIC, STOP_PHRASE),
        'estop': Feedback(ESTOP_TOPIC, True),
        'release': Feedback(ESTOP_TOPIC, False),
        'quit': QUIT,
    }
    if word in by_word:
        return by_word[word]
    if len(word) == 1:
        return feedback_for_key(word, scale, estop_engaged)
    return None


def decode_keys(data: bytes) -> List[str]:
    """Split what the terminal sent into keys: characters, UP, DOWN or whole escape codes."""
    text = data.decode('utf-8', 'replace')
    return [_ESCAPES.get(key, key) for key in _KEY_PATTERN.findall(text)]


class Session:
    """What the person has said so far, published through `publish` and printed."""

    def __init__(self, publish: Callable[[Feedback], int], scale: float,
                 echo: Callable[[str], None] = print):
        """`publish` sends a message and returns the subscribers on its topic."""
        self.scale = scale
        self.positive = 0
        self.negative = 0
        self.estop: Optional[bool] = None  # None: this session never published on estop
        self._publish = publish
        self._echo = echo

    def key(self, key: str) -> bool:
        """Act on a key press; return False when it quits."""
        feedback = feedback_for_key(key, self.scale, bool(self.estop))
        if feedback is None:
            self._echo(f'unknown key {key!r}: {KEY_HINT}')
            return True
        return self.apply(feedback)

    def line(self, line: str) -> bool:
        """Act on a line of piped input; return False when it quits."""
        if not line.strip():
            return True
        feedback = feedback_for_line(line, self.scale, bool(self.estop))
        if feedback is None:
            self._echo(f'unknown input {line.strip()!r}: {LINE_HINT}')
            return True
        return self.apply(feedback)

    def apply(self, feedback: Feedback) -> bool:
        """Publish `feedback` and print a line about it; return False for QUIT."""
        if feedback == QUIT:
            return False
        subscribers = self._publish(feedback)
        if feedback.topic == REWARD_TOPIC:
            if feedback.value > 0:
                self.positive += 1
            else:
                self.negative += 1
            said = f'{feedback.value:+g}'
        elif feedback.topic == ESTOP_TOPIC:
            self.estop = bool(feedback.value)
            said = ('True (ESTOP ENGAGED: the robot stays stopped until released)'
                    if self.estop else 'False (released: the robot waits for an instruction)')
        else:
            said = repr(feedback.value)
        nobody = ' (no subscriber heard it)' if subscribers == 0 else ''
        self._echo(f'{feedback.topic}: {said}{nobody}   [+{self.positive} / -{self.negative}]')
        return True

    def farewell(self) -> str:
        """Return the last line: the rewards sent and the state the estop is left in."""
        if self.estop is None:
            state = 'estop not touched'
        elif self.estop:
            state = ('estop left ENGAGED: the robot stays stopped until False is published '
                     'on estop')
        else:
            state = 'estop left released'
        return f'quit after {self.positive} + and {self.negative} - rewards; {state}'


class FeedbackNode:
    """The ROS side: one publisher per topic, with QoS matching the subscribers'."""

    def __init__(self, context: Context, namespace: str, wait_for_subscriber_s: float):
        self.node = rclpy.create_node(NODE_NAME, context=context,
                                      namespace=namespace or None)
        self._publishers = {
            REWARD_TOPIC: (Float32, self.node.create_publisher(Float32, REWARD_TOPIC,
                                                               STREAM_QOS)),
            SPEECH_TOPIC: (String, self.node.create_publisher(String, SPEECH_TOPIC,
                                                              COMMAND_QOS)),
            ESTOP_TOPIC: (Bool, self.node.create_publisher(Bool, ESTOP_TOPIC, COMMAND_QOS)),
        }
        self._wait_s = wait_for_subscriber_s
        self._waited = set()

    def topic_names(self) -> Dict[str, str]:
        """Return the resolved name of every topic, by relative name."""
        return {name: publisher.topic_name for name, (_, publisher) in self._publishers.items()}

    def publish(self, feedback: Feedback) -> int:
        """Publish `feedback`; return the number of subscribers on its topic."""
        message_type, publisher = self._publishers[feedback.topic]
        if feedback.topic not in self._waited:
            self._waited.add(feedback.topic)
            deadline = time.monotonic() + self._wait_s
            while publisher.get_subscription_count() == 0 and time.monotonic() < deadline:
                time.sleep(0.02)
        publisher.publish(message_type(data=feedback.value))
        return publisher.get_subscription_count()

    def close(self) -> None:
        """Wait for the subscribers to acknowledge every message, then leave."""
        for _, publisher in self._publishers.values():
            publisher.wait_for_all_acked(Duration(seconds=ACK_TIMEOUT_S))
        self.node.destroy_node()


def read_terminal_keys(fd: int) -> Iterator[str]:
    """Yield the keys pressed on the terminal `fd` (in cbreak mode) until end of input."""
    while True:
        data = os.read(fd, 64)
        if not data:
            return
        while (_INCOMPLETE_ESCAPE.search(data.decode('utf-8', 'replace'))
               and select.select([fd], [], [], ESCAPE_WAIT_S)[0]):
            data += os.read(fd, 64)
        yield from decode_keys(data)


@contextlib.contextmanager
def keys_unbuffered(fd: int) -> Iterator[None]:
    """Put the terminal `fd` in cbreak mode for the block, and restore its mode after it."""
    saved = termios.tcgetattr(fd)
    try:
        # cbreak, not raw: keys arrive at once and unechoed, while output keeps its line
        # endings and Ctrl-C still interrupts. TCSANOW keeps the keys typed during start-up.
        tty.setcbreak(fd, termios.TCSANOW)
        yield
    finally:
        termios.tcsetattr(fd, termios.TCSADRAIN, saved)


def _from_keyboard(session: Session, fd: int) -> None:
    for key in read_terminal_keys(fd):
        if not session.key(key):
            return


def _from_lines(session: Session) -> None:
    for line in sys.stdin:
        if not session.line(line):
            return


class InterruptOutsidePublish:
    """
    The SIGINT / SIGTERM handler: raise `KeyboardInterrupt`, but never inside a publish.

    The main thread mostly blocks reading keys, and only an exception ends that read, so the
    handler raises. Raised while rclpy's C++ code is converting the message being published,
    the exception would come out as an unrelated pybind11 `RuntimeError` and the message
    could be half sent; a signal during `publishing()` is held and raised as the block ends.
    """

    def __init__(self):
        self._busy = False
        self._pending = False

    def __call__(self, signum, frame) -> None:
        if self._busy:
            self._pending = True
            return
        raise KeyboardInterrupt

    @contextlib.contextmanager
    def publishing(self) -> Iterator[None]:
        self._busy = True
        try:
            yield
        finally:
            self._busy = False
        if self._pending:
            self._pending = False
            raise KeyboardInterrupt


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument('--namespace', default='',
                        help='namespace of the robot, e.g. robot1 (default: none)')
    parser.add_argument('--reward-scale', type=float, default=1.0,
                        help='size of one reward: + sends +SCALE, - sends -SCALE (default: 1)')
    parser.add_argument('--wait-for-subscriber', type=float, default=None, metavar='SECONDS',
                        help='before the first message on a topic nobody subscribes yet, wait '
                             f'this long for a subscriber (default: {PIPED_WAIT_S:g} for piped '
                             'input, 0 at a keyboard)')
    parser.add_argument('--ros-args', dest='ros_args', nargs=argparse.REMAINDER, default=[],
                        help='the rest goes to ROS, e.g. --ros-args -r __ns:=/robot1')


def run(args: argparse.Namespace) -> int:
    if not (math.isfinite(args.reward_scale) and args.reward_scale > 0):
        print(f'vlit-ros feedback: error: --reward-scale must be positive, got '
              f'{args.reward_scale:g}', file=sys.stderr)
        return 2
    keyboard = sys.stdin.isatty()
    wait_s = args.wait_for_subscriber
    if wait_s is None:
        wait_s = 0.0 if keyboard else PIPED_WAIT_S
    # The terminal changes mode first, so keys pressed while ROS starts are neither echoed
    # nor lost.
    with keys_unbuffered(sys.stdin.fileno()) if keyboard else contextlib.nullcontext():
        return _serve(args, keyboard, wait_s)


def _serve(args: argparse.Namespace, keyboard: bool, wait_s: float) -> int:
    context = Context()
    ros_args = ['--ros-args', *args.ros_args] if args.ros_args else []
    # Without rclpy's handlers Ctrl-C is a KeyboardInterrupt, so the terminal is restored
    # and the sent messages are acknowledged before the context goes.
    try:
        rclpy.init(args=['vlit-ros feedback', *ros_args], context=context,
                   signal_handler_options=SignalHandlerOptions.NO)
    except _rclpy.RCLError as exc:
        print(f'vlit-ros feedback: error: {exc}', file=sys.stderr)
        return 2
    interrupt = InterruptOutsidePublish()
    previous = {sig: signal.signal(sig, interrupt) for sig in (signal.SIGINT, signal.SIGTERM)}
    node = None
    try:
        node = FeedbackNode(context, args.namespace, wait_s)

        def publish(feedback: Feedback) -> int:
            with interrupt.publishing():
                return node.publish(feedback)

        session = Session(publish, args.reward_scale,
                          echo=lambda text: print(text, flush=True))
        legend = KEY_LEGEND if keyboard else LINE_LEGEND
        names = node.topic_names()
        print(f'{legend.format(scale=args.reward_scale)} '
              f'(on {names[REWARD_TOPIC]}, {names[SPEECH_TOPIC]}, {names[ESTOP_TOPIC]})',
              flush=True)
        try:
            if keyboard:
                _from_keyboard(session, sys.stdin.fileno())
            else:
                _from_lines(session)
        except KeyboardInterrupt:
            pass
        print(session.farewell(), flush=True)
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        if node is not None:
            node.close()
        rclpy.try_shutdown(context=context)
    return 0
