"""`vlit_ros/core/` and `vlit_ros/sim/` must never import ROS (DESIGN.md §6)."""

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / 'vlit_ros'
ROS_MODULES = ('rclpy', 'rosidl', 'rosgraph_msgs', 'launch', 'launch_ros', 'ament_index_python',
               'cv_bridge', 'message_filters', 'tf2_ros')


def _is_ros(module: str) -> bool:
    top = module.split('.')[0]
    return top in ROS_MODULES or top.endswith('_msgs') or top.endswith('_srvs') or \
        top.endswith('_interfaces')


def _imports(path: Path):
    tree = ast.parse(path.read_text(), filename=str(path))
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            yield from (alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            yield node.module
        elif isinstance(node, ast.Call) and getattr(node.func, 'attr', '') == 'import_module':
            if node.args and isinstance(node.args[0], ast.Constant):
                yield str(node.args[0].value)


@pytest.mark.parametrize('folder', ['core', 'sim'])
def test_folder_imports_no_ros(folder):
    files = sorted((PACKAGE / folder).rglob('*.py'))
    assert files, f'no Python files found under vlit_ros/{folder}'
    offenders = [f'{path.relative_to(PACKAGE)}: {module}' for path in files
                 for module in _imports(path) if _is_ros(module)]
    assert not offenders, 'ROS imports in pure-Python code:\n' + '\n'.join(offenders)


def test_detector_catches_ros_imports(tmp_path):
    bad = tmp_path / 'bad.py'
    bad.write_text('import rclpy\nfrom sensor_msgs.msg import Image\n')
    assert [m for m in _imports(bad) if _is_ros(m)] == ['rclpy', 'sensor_msgs.msg']
