"""
The task parameters: the numbers an instruction asks for, as the model reads them.

The fusion's task head regresses them from the instruction and puts them last in the fused
state, each over its scale; the executor compares them with odometry; training targets and
read-outs convert with the same scales. No torch here, so data tools can import it.
"""

import math

# Requested turn angle over TURN_ANGLE_SCALE_RAD (+ = left), requested distance over
# MOVE_DISTANCE_SCALE_M.
TASK_PARAMETERS = ('turn_angle', 'move_distance')
TURN_ANGLE_SCALE_RAD = math.pi
MOVE_DISTANCE_SCALE_M = 2.0
