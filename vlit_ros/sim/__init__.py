"""The built-in MuJoCo task world, its tasks and the privileged expert (no ROS)."""
