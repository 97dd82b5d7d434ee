"""
Helpers for the launch_testing tests in this folder (imported only where launch is installed).

`robot_launch(sim, ...)` includes the installed `robot.launch.py` on a ROS_DOMAIN_ID of its
own; `TopicProbe` listens on that domain from a fresh rclpy Context and records which topics
have delivered a message. The domain is set for the whole launch rather than a scoped group,
so processes the launch file starts later (timers, event handlers) join the same domain.
"""

import random
import threading
import time
from typing import Dict, Tuple

from ament_index_python.packages import get_package_share_directory
from launch import LaunchDescription
from launch.actions import IncludeLaunchDescription, SetEnvironmentVariable
from launch.launch_description_sources import PythonLaunchDescriptionSource
import launch_testing.actions
import rclpy
from rclpy.context import Context
from rclpy.executors import SingleThreadedExecutor
from rclpy.qos import qos_profile_sensor_data


def robot_launch(sim: str, **arguments: str) -> Tuple[LaunchDescription, Dict[str, int]]:
    """Return the launch description under test and the test context (its domain id)."""
    domain_id = random.SystemRandom().randint(1, 100)
    launch_file = f'{get_package_share_directory("vlit_ros")}/launch/robot.launch.py'
    return LaunchDescription([
        SetEnvironmentVariable('ROS_DOMAIN_ID', str(domain_id)),
        IncludeLaunchDescription(PythonLaunchDescriptionSource(launch_file),
                                 launch_arguments={'sim': sim, **arguments}.items()),
        launch_testing.actions.ReadyToTest(),
    ]), {'domain_id': domain_id}


class TopicProbe:
    """A test node on the launched graph's domain that keeps the first message per topic."""

    def __init__(self, domain_id: int, topics: Dict[str, type]):
        self.context = Context()
        rclpy.init(context=self.context, domain_id=domain_id)
        self.node = rclpy.create_node('launch_test_probe', context=self.context)
        self.first = {}
        self._lock = threading.Lock()
        # Best effort matches both reliable and best-effort publishers (the bridge's /clock).
        for name, msg_type in topics.items():
            self.node.create_subscription(msg_type, name,
                                          lambda msg, name=name: self._store(name, msg),
                                          qos_profile_sensor_data)
        self.topics = tuple(topics)
        self._executor = SingleThreadedExecutor(context=self.context)
        self._executor.add_node(self.node)
        self._spinner = threading.Thread(target=self._executor.spin, daemon=True)
        self._spinner.start()

    def _store(self, name: str, msg) -> None:
        with self._lock:
            self.first.setdefault(name, msg)

    def wait_for_all(self, timeout_s: float) -> Tuple[str, ...]:
        """Wait until every topic delivered a message; return the ones still silent."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            with self._lock:
                missing = tuple(t for t in self.topics if t not in self.first)
            if not missing:
                return ()
            time.sleep(0.2)
        return missing

    def close(self) -> None:
        """Stop spinning and shut the context down."""
        self._executor.shutdown()
        self.node.destroy_node()
        rclpy.shutdown(context=self.context)
        self._spinner.join(timeout=5.0)
