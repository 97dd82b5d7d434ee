"""
Start, spin and stop a node process the same way for every node of the package.

rclpy's own signal handlers would shut the context down before a node's clean-up (the
follower's zero command, the trainer's final save, the task's results) can publish, so
`run_node` installs its own: SIGINT and SIGTERM raise `KeyboardInterrupt` in the spinning
thread, and a second signal during the clean-up is ignored. A node that cannot start raises
`StartupError` from its constructor; `run_node` logs it as one fatal line and returns 2.
"""

import signal
from typing import Callable, Optional

import rclpy
from rclpy.executors import ExternalShutdownException, SingleThreadedExecutor
from rclpy.node import Node
from rclpy.signals import SignalHandlerOptions


class StartupError(RuntimeError):
    """The node cannot start (bad parameters, an unloadable policy, ...)."""


def _raise_keyboard_interrupt(signum, frame):
    raise KeyboardInterrupt


def run_node(factory: Callable[[], Node], name: str, args=None,
             spin: Optional[Callable[[Node, SingleThreadedExecutor], int]] = None,
             stop: Optional[Callable[[Node], None]] = None) -> int:
    """
    Run one node until it finishes or is interrupted; return the process exit code.

    `spin(node, executor)` runs the node and returns its exit code (default: spin until
    interrupted, 0); `stop(node)` is the node's clean-up, called however spinning ended.
    """
    rclpy.init(args=args, signal_handler_options=SignalHandlerOptions.NO)
    # Also SIGINT: a process started in the background inherits it ignored.
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, _raise_keyboard_interrupt)
    try:
        node = factory()
    except StartupError as exc:
        rclpy.logging.get_logger(name).fatal(str(exc))
        rclpy.try_shutdown()
        return 2
    executor = SingleThreadedExecutor()
    executor.add_node(node)
    code = 0
    try:
        code = spin(node, executor) if spin is not None else (executor.spin() or 0)
    except (KeyboardInterrupt, ExternalShutdownException):
        code = 0
    finally:
        # Shutting down already: a second signal must not cut the clean-up short.
        for sig in (signal.SIGINT, signal.SIGTERM):
            signal.signal(sig, signal.SIG_IGN)
        if stop is not None:
            stop(node)
        executor.shutdown()
        node.destroy_node()
        rclpy.try_shutdown()
    return code
