"""
Off-screen rendering of a MuJoCo model's cameras, on GL contexts shared within a thread.

`mujoco.Renderer` makes a GL context of its own, and the first rendering context
(`MjrContext`: shaders, fonts, buffers) made on a GL context takes ~170 ms on the CPU (Mesa),
the next ones ~5 ms. The simulator builds a new model for every scene, so an episode paid
that once per camera: a third of the wall time of DAgger rollouts and evaluations. Here one
GL context per thread and image size serves every model; each `CameraRenderer` keeps only
its model's `MjrContext` and scene, and renders the same pixels as `mujoco.Renderer`.

GL contexts are current in one thread at a time, so a renderer used from another thread
than the one it was made in moves to that thread's context (rebuilding its `MjrContext`).
A rendering context is freed only where its GL context is current: one left on another
thread's GL context (a renderer that moved, or was closed, elsewhere) is freed when that thread
next renders at that size, or at exit. A thread's GL contexts live until the process exits
(the nodes render from one thread).
Where MuJoCo has no GL context class (the Filament back-end), `mujoco.Renderer` is used.
"""

import atexit
import os
import threading
from typing import Dict, List, Tuple

import numpy as np

# Headless machines have no display: EGL renders off-screen. Respect an explicit choice.
os.environ.setdefault('MUJOCO_GL', 'egl')
import mujoco  # noqa: E402,I100  (must follow the MUJOCO_GL default above)
from mujoco import gl_context  # noqa: E402

# Geoms an `MjvScene` holds; the arena, robot and objects use a few dozen.
MAX_GEOMS = 1000

_local = threading.local()
_all_contexts = []
# id(GL context) -> rendering contexts made on it, left by renderers that moved or closed
# on another thread; freed by the context's own thread.
_orphans: Dict[int, List[mujoco.MjrContext]] = {}
_lock = threading.Lock()


def _shared_context(height: int, width: int):
    """Return this thread's GL context for images of this size, made current."""
    contexts: Dict[Tuple[int, int], object] = getattr(_local, 'contexts', None)
    if contexts is None:
        contexts = _local.contexts = {}
    context = contexts.get((height, width))
    if context is None:
        context = gl_context.GLContext(width, height)
        contexts[(height, width)] = context
        with _lock:
            if not _all_contexts:
                # Registered after MuJoCo's own EGL clean-up, so it runs before it.
                atexit.register(_free_all)
            _all_contexts.append(context)
    context.make_current()
    with _lock:
        orphans = _orphans.pop(id(context), [])
    for mjr in orphans:
        mjr.free()
    return context


def _is_this_threads(context) -> bool:
    return any(context is mine for mine in getattr(_local, 'contexts', {}).values())


def _free_all() -> None:
    with _lock:
        while _all_contexts:
            try:
                _all_contexts.pop().free()
            except Exception:  # the process is exiting: a context EGL already let go of
                pass
        # Their GL objects went with their GL contexts.
        _orphans.clear()


class CameraRenderer:
    """Renders RGB images (H x W x 3 uint8) of a model's fixed cameras at one size."""

    def __init__(self, model: mujoco.MjModel, height: int, width: int):
        if width > model.vis.global_.offwidth or height > model.vis.global_.offheight:
            raise ValueError(f'{width}x{height} exceeds the off-screen buffer of the model '
                             f'{model.vis.global_.offwidth}x{model.vis.global_.offheight}')
        self._model = model
        self._height, self._width = height, width
        self._fallback = None
        self._mjr = None
        self._owner = None
        if gl_context.GLContext is None:
            self._fallback = mujoco.Renderer(model, height, width)
            return
        self._scene = mujoco.MjvScene(model, maxgeom=MAX_GEOMS)
        self._option = mujoco.MjvOption()
        self._camera = mujoco.MjvCamera()
        self._camera.type = mujoco.mjtCamera.mjCAMERA_FIXED
        self._rect = mujoco.MjrRect(0, 0, width, height)
        self._bind()

    def _bind(self) -> None:
        """Make this thread's GL context current and this model's rendering context on it."""
        context = _shared_context(self._height, self._width)
        if self._owner is not context:
            self._release_mjr()
            self._mjr = mujoco.MjrContext(self._model, mujoco.mjtFontScale.mjFONTSCALE_150)
            self._owner = context
        # Several rendering contexts share the GL context: select this one's buffer.
        mujoco.mjr_setBuffer(mujoco.mjtFramebuffer.mjFB_OFFSCREEN, self._mjr)

    def render(self, data: mujoco.MjData, camera: str) -> np.ndarray:
        """Render the named camera of the model in state `data`."""
        if self._fallback is not None:
            self._fallback.update_scene(data, camera=camera)
            return self._fallback.render().copy()
        if self._owner is None:
            raise RuntimeError('render cannot be called after close')
        camera_id = mujoco.mj_name2id(self._model, mujoco.mjtObj.mjOBJ_CAMERA, camera)
        if camera_id < 0:
            raise ValueError(f'the camera {camera!r} does not exist')
        self._bind()
        self._camera.fixedcamid = camera_id
        mujoco.mjv_updateScene(self._model, data, self._option, None, self._camera,
                               mujoco.mjtCatBit.mjCAT_ALL, self._scene)
        mujoco.mjr_render(self._rect, self._scene, self._mjr)
        out = np.empty((self._height, self._width, 3), np.uint8)
        mujoco.mjr_readPixels(out, None, self._rect, self._mjr)
        # OpenGL's rows run bottom to top.
        return np.ascontiguousarray(out[::-1])

    def _release_mjr(self) -> None:
        """Free the rendering context on its GL context, or leave it to that context's thread."""
        if self._mjr is None:
            return
        if _is_this_threads(self._owner):
            self._owner.make_current()
            self._mjr.free()
        else:
            with _lock:
                _orphans.setdefault(id(self._owner), []).append(self._mjr)
        self._mjr = None

    def close(self) -> None:
        """Release this model's rendering context (the shared GL context stays)."""
        if self._fallback is not None:
            self._fallback.close()
            return
        self._release_mjr()
        self._owner = None
