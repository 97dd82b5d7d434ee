"""Thin ROS 2 node wrappers over vlit_ros.core and vlit_ros.sim."""
