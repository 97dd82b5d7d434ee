"""
Start, spin and stop a node process the same way for every node of the package.

rclpy's own signal handlers would shut the context down before a node's clean-up (the
follower's zero command, the trainer's final save, the task's results) can publish, so
`run_node` installs its own. SIGINT and SIGTERM do not raise in the spinning thread: an
exception raised by a Python signal handler while rclpy's C++ code is converting a message
comes out as an unrelated `RuntimeError` (pybind11 "Unable to convert call argument"), and the
node would exit 1 without its clean-up. Instead the handler sets a flag, and the spin loop
(which waits at most `SPIN_PERIOD_S` at a time) finishes the callback it is in and returns. A
second signal while spinning (a callback that hangs) raises `KeyboardInterrupt`; signals
during the clean-up are ignored. A node that cannot start raises `StartupError` from its
constructor; `run_node` logs it as one fatal line and returns 2.
"""

import signal
import threading
from typing import Callable, Optional

import rclpy
from rclpy.executors import ExternalShutdownException, SingleThreadedExecutor
from rclpy.node import Node
from rclpy.signals import SignalHandlerOptions


class StartupError(RuntimeError):
    """The node cannot start (bad parameters, an unloadable policy, ...)."""


# Longest wait for work before the spin loop looks at the interrupt flag again (s).
SPIN_PERIOD_S = 0.1


class _Interrupt:
    """The SIGINT / SIGTERM handler while a node runs: the first sets `requested`."""

    def __init__(self):
        self.requested = threading.Event()

    def __call__(self, signum, frame) -> None:
        if self.requested.is_set():
            raise KeyboardInterrupt
        self.requested.set()


def spin_until(executor: SingleThreadedExecutor, interrupted: threading.Event,
               done: Callable[[], bool] = lambda: False) -> None:
    """Spin until `done()`, an interrupt or an rclpy shutdown, looking every SPIN_PERIOD_S."""
    while not (interrupted.is_set() or done()) and executor.context.ok():
        executor.spin_once(timeout_sec=SPIN_PERIOD_S)


def run_node(factory: Callable[[], Node], name: str, args=None,
             spin: Optional[Callable[[Node, SingleThreadedExecutor, threading.Event],
                                     int]] = None,
             stop: Optional[Callable[[Node], None]] = None) -> int:
    """
    Run one node until it finishes or is interrupted; return the process exit code.

    `spin(node, executor, interrupted)` runs the node until it is done or the event
    `interrupted` is set (usually with `spin_until`), and returns its exit code (default:
    spin until interrupted, 0);
    `stop(node)` is the node's clean-up, called however spinning ended.
    """
    rclpy.init(args=args, signal_handler_options=SignalHandlerOptions.NO)
    interrupt = _Interrupt()
    # Also SIGINT: a process started in the background inherits it ignored.
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, interrupt)
    try:
        node = factory()
    except StartupError as exc:
        rclpy.logging.get_logger(name).fatal(str(exc))
        rclpy.try_shutdown()
        return 2
    except KeyboardInterrupt:
        rclpy.try_shutdown()
        return 0
    executor = SingleThreadedExecutor()
    executor.add_node(node)
    code = 0
    try:
        if spin is not None:
            code = spin(node, executor, interrupt.requested)
        else:
            spin_until(executor, interrupt.requested)
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
