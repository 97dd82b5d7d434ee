"""Pure-Python (and PyTorch) building blocks; nothing here may import ROS."""
