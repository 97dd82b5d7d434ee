"""
Measure the simulator's speed: render time, real-time factor, scene switch time.

The real-time factor is at 10 Hz control; a scene switch builds a new scene's model and
renders its first frame.

Usage: python bench/sim_speed.py [--steps 2000] [--scenes 40] [--json OUT.json]

Every episode of gen-data, DAgger and `vlit-ros eval` starts in a new scene; since the GL
context is shared across scenes (`vlit_ros.sim.rendering`) a switch takes ~13 ms instead of
~200 ms on two CPU cores.
"""

import argparse
import json
import statistics
import time

from vlit_ros.sim.world import World


def main():
    parser = argparse.ArgumentParser(description=__doc__.strip().splitlines()[0])
    parser.add_argument('--steps', type=int, default=2000)
    parser.add_argument('--scenes', type=int, default=40)
    parser.add_argument('--json', default=None)
    args = parser.parse_args()
    commands = ['forward', 'forward_left', 'turn_right', 'forward_right', 'backward']
    with World() as world:
        world.render()
        render_ms, step_ms = [], []
        for i in range(args.steps):
            if i % 200 == 0:
                world.reset(seed=i)
            t0 = time.perf_counter()
            world.step(commands[(i // 10) % len(commands)])
            t1 = time.perf_counter()
            world.render()
            t2 = time.perf_counter()
            step_ms.append((t1 - t0) * 1e3)
            render_ms.append((t2 - t1) * 1e3)
        switch_ms = []
        for seed in range(args.scenes):
            t0 = time.perf_counter()
            world.reset(seed=10_000 + seed)
            world.render()
            switch_ms.append((time.perf_counter() - t0) * 1e3)
    period_ms = world.control_period * 1e3
    result = {
        'steps': args.steps,
        'physics_step_ms_median': statistics.median(step_ms),
        'render_128x96_ms_median': statistics.median(render_ms),
        'render_128x96_ms_p95': sorted(render_ms)[int(0.95 * len(render_ms))],
        'scene_switch_ms_median': statistics.median(switch_ms),
        'real_time_factor_physics_only': period_ms / statistics.median(step_ms),
        'real_time_factor_with_camera': period_ms / statistics.median(
            [a + b for a, b in zip(step_ms, render_ms)]),
    }
    for key, value in result.items():
        print(f'{key:<34} {value:10.2f}' if isinstance(value, float) else f'{key:<34} {value}')
    if args.json:
        with open(args.json, 'w') as f:
            json.dump(result, f, indent=2)


if __name__ == '__main__':
    main()
