"""Every QoS profile the package uses, named in one place (DESIGN.md §6)."""

from rclpy.qos import (DurabilityPolicy, HistoryPolicy, QoSProfile, ReliabilityPolicy)

# Camera frames: only the newest matters; never queue stale images.
IMAGE_QOS = QoSProfile(history=HistoryPolicy.KEEP_LAST, depth=1,
                       reliability=ReliabilityPolicy.BEST_EFFORT,
                       durability=DurabilityPolicy.VOLATILE)
# Motion commands and instructions: every message must arrive, the latest wins.
COMMAND_QOS = QoSProfile(history=HistoryPolicy.KEEP_LAST, depth=1,
                         reliability=ReliabilityPolicy.RELIABLE,
                         durability=DurabilityPolicy.VOLATILE)
# Streams that must not drop under bursts (experience, rewards, episode events, odometry).
STREAM_QOS = QoSProfile(history=HistoryPolicy.KEEP_LAST, depth=50,
                        reliability=ReliabilityPolicy.RELIABLE,
                        durability=DurabilityPolicy.VOLATILE)
# /clock follows rclcpp's ClockQoS (best effort, depth 1): the profile of camera frames.
CLOCK_QOS = IMAGE_QOS
# Camera frames kept by a recorder (the demo's video) to pair with another view of a step.
RECORDING_DEPTH = 32
# A recorder wants every frame: the camera's best-effort profile with room to fall behind.
RECORDING_QOS = QoSProfile(history=IMAGE_QOS.history, depth=RECORDING_DEPTH,
                           reliability=IMAGE_QOS.reliability, durability=IMAGE_QOS.durability)
# Latched state: late joiners get the last value (policy weights, scene, status).
LATCHED_QOS = QoSProfile(history=HistoryPolicy.KEEP_LAST, depth=1,
                         reliability=ReliabilityPolicy.RELIABLE,
                         durability=DurabilityPolicy.TRANSIENT_LOCAL)
