"""
Gazebo (gz-sim) simulation of the task world, built from the same seeded scene as MuJoCo.

- `vlit_ros.gazebo.sdf`: `build_world_sdf(scene)`, `write_world(scene, out_dir)`.
- `vlit_ros.gazebo.bridge`: the ros_gz_bridge topic table and its YAML configuration.
- `vlit_ros.gazebo.launch_plan`: `gazebo_processes(...)`, the processes `sim:=gazebo` starts.
- `vlit_ros.gazebo.cli_world`: the `vlit-ros gz-world` command.

Everything here is pure Python; Gazebo itself is only needed to run the result.
"""
