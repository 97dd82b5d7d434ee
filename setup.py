"""Build script for vlit_ros: an ament_python ROS 2 package that also pip-installs."""

from glob import glob
import os

from setuptools import find_packages, setup

package_name = 'vlit_ros'


def _data(pattern):
    return [f for f in glob(pattern) if os.path.isfile(f)]


setup(
    name=package_name,
    version='0.1.0',
    packages=find_packages(exclude=['test', 'test.*']),
    package_data={package_name: ['checkpoints/*/*', 'checkpoints/*/*/*']},
    data_files=[
        ('share/ament_index/resource_index/packages', ['resource/' + package_name]),
        ('share/' + package_name, ['package.xml']),
        ('share/' + package_name + '/launch', _data('launch/*.py')),
        ('share/' + package_name + '/config', _data('config/*.yaml')),
        ('share/' + package_name + '/worlds', _data('worlds/*')),
    ],
    install_requires=['setuptools'],
    zip_safe=False,
    maintainer='vlit_ros developers',
    maintainer_email='vlit-ros@example.org',
    description='Visual instruction following for ROS 2: a vision-language model, an '
                'instruction executor with a safety gate, and online learning from rewards.',
    license='Apache-2.0',
    python_requires='>=3.10',
    tests_require=['pytest'],
    entry_points={
        'console_scripts': [
            'vlit-ros = vlit_ros.cli:main',
            'instruction_follower = vlit_ros.nodes.instruction_follower:main',
            'sim = vlit_ros.nodes.sim_node:main',
            'task = vlit_ros.nodes.task_node:main',
            'trainer = vlit_ros.nodes.trainer_node:main',
        ],
    },
)
