"""`run_node`: how every node process starts, is interrupted and cleans up."""

import os
import random
import subprocess
import sys
import textwrap

import pytest

from vlit_ros.nodes.lifecycle import _Interrupt

# A node that floods itself with messages and signals its own process while they arrive:
# the signal must end spinning cleanly (exit 0, clean-up run), never as an error raised from
# inside rclpy's message conversion.
_SCRIPT = textwrap.dedent("""
    import os, signal, sys, threading, time
    from rclpy.node import Node
    from sensor_msgs.msg import Image
    from vlit_ros.nodes.lifecycle import run_node

    SIG = getattr(signal, sys.argv[1])

    class Flood(Node):
        def __init__(self):
            super().__init__('flood')
            self.received = 0
            # A camera frame: its conversion runs Python code, where a signal can land.
            self.frame = Image(height=96, width=128, encoding='rgb8', step=384,
                               data=bytes(96 * 384))
            self.pub = self.create_publisher(Image, 'flood', 100)
            self.create_subscription(Image, 'flood', self.on_message, 100)
            self.create_timer(0.001, self.tick)
            # From another thread, as a signal from outside arrives: at any point of the
            # main thread's work, most of which is taking and converting messages.
            threading.Thread(target=self.signal_later, daemon=True).start()

        def tick(self):
            for _ in range(5):
                self.pub.publish(self.frame)

        def signal_later(self):
            while self.received < 100:
                time.sleep(0.001)
            os.kill(os.getpid(), SIG)

        def on_message(self, msg):
            self.received += 1

    def stop(node):
        print('clean-up ran after', node.received, 'messages', flush=True)

    sys.exit(run_node(Flood, 'flood', stop=stop))
""")


def test_first_signal_sets_the_flag_and_a_second_raises():
    interrupt = _Interrupt()
    interrupt(2, None)
    assert interrupt.requested.is_set()
    with pytest.raises(KeyboardInterrupt):
        interrupt(2, None)


@pytest.mark.parametrize('sig', ['SIGINT', 'SIGTERM'])
def test_a_signal_amid_message_traffic_ends_the_node_cleanly(sig):
    env = dict(os.environ, ROS_DOMAIN_ID=str(random.SystemRandom().randint(101, 200)),
               ROS_AUTOMATIC_DISCOVERY_RANGE='LOCALHOST')
    env.pop('ROS_LOCALHOST_ONLY', None)
    for _ in range(5):
        result = subprocess.run([sys.executable, '-c', _SCRIPT, sig], env=env,
                                capture_output=True, text=True, timeout=60)
        assert result.returncode == 0, result.stdout + result.stderr
        assert 'clean-up ran after' in result.stdout, result.stdout + result.stderr
