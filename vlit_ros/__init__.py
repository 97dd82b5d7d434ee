"""vlit_ros: visual instruction following for ROS 2 robots."""

__version__ = '0.1.0'
