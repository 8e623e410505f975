"""Install ``engine/`` as ``cogvideo_engine`` and ``kernels/`` as ``cogvideo_engine.kernels`` (with every
sub-package found under them), and build the csrc kernels (``cogvideo_engine._C``) with CMake + Ninja.

Build knobs (environment variables; csrc/README.md has the CMake options they set):

- ``COGVIDEO_CUDA``: ``auto`` (default: the CUDA kernels when nvcc is found), ``1`` (nvcc required: the build
  fails without it) or ``0`` (CPU kernels only).
- ``COGVIDEO_CUDA_ARCHS``: e.g. ``80;90`` (default ``80;90``); setting it asks for CUDA, as ``COGVIDEO_CUDA=1``.
- ``COGVIDEO_NATIVE=1``: CPU kernels for the build machine only (``-march=native``). By default they are compiled
  for x86-64, x86-64-v3 (AVX2) and x86-64-v4 (AVX-512) and the best the CPU supports runs, so a wheel runs on
  any x86-64 CPU.
- ``COGVIDEO_BUILD_TESTS=1``: also build the C++ tests (``ctest --test-dir build/cmake``; scripts/test.sh).
- ``COGVIDEO_NO_EXT=1``: a pure-Python install.

The CMake build tree is kept in ``build/cmake-py3XX`` (``build/cmake`` links to it) so rebuilds are incremental.
The version is ``__version__`` in ``engine/__init__.py``, read here without importing the package.
"""

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

from setuptools import Extension, setup
from setuptools.command.build_ext import build_ext
from setuptools.command.sdist import sdist

ROOT = Path(__file__).resolve().parent
PACKAGE_ROOTS = {"cogvideo_engine": "engine", "cogvideo_engine.kernels": "kernels"}  # package -> directory


def read_version() -> str:
    text = (ROOT / "engine" / "__init__.py").read_text(encoding="utf-8")
    match = re.search(r"^__version__\s*=\s*[\"']([^\"']+)[\"']", text, re.MULTILINE)
    if match is None:
        raise RuntimeError("engine/__init__.py has no __version__ = '...' line")
    return match.group(1)


def find_packages_in_tree() -> list[str]:
    """Every directory under a package root that holds an ``__init__.py``, as a dotted package name."""
    if (ROOT / "engine" / "kernels").exists():
        raise RuntimeError("engine/kernels/ would shadow kernels/ (installed as cogvideo_engine.kernels)")
    packages = []
    for package, directory in PACKAGE_ROOTS.items():
        base = ROOT / directory
        for init in sorted(base.rglob("__init__.py")):
            rel = init.parent.relative_to(base)
            if any(part == "__pycache__" or part.startswith(".") for part in rel.parts):
                continue
            packages.append(".".join((package, *rel.parts)))
    return packages


def env_flag(name: str, default: str) -> str:
    """An on/off/auto build knob from the environment: 'ON', 'OFF' or 'AUTO'."""
    value = os.environ.get(name, "").strip().lower() or default
    if value in ("1", "on", "true", "yes"):
        return "ON"
    if value in ("0", "off", "false", "no"):
        return "OFF"
    if value == "auto":
        return "AUTO"
    raise RuntimeError(f"{name}={os.environ[name]!r}: use 1, 0 or auto")


class CMakeExtension(Extension):
    def __init__(self, name: str):
        super().__init__(name, sources=[])


class CMakeBuild(build_ext):
    def build_extension(self, ext):
        cmake = shutil.which("cmake")
        if cmake is None:
            raise RuntimeError("building cogvideo_engine._C needs cmake (>= 3.22) on PATH; "
                               "set COGVIDEO_NO_EXT=1 for a pure-Python install")
        import pybind11

        build_dir = ROOT / "build" / f"cmake-py{sys.version_info.major}{sys.version_info.minor}"
        archs = os.environ.get("COGVIDEO_CUDA_ARCHS", "").strip()  # (CMake: set archs ask for CUDA)
        cuda = env_flag("COGVIDEO_CUDA", "auto")
        # every knob is passed on every build, so a kept build tree follows the environment of this build
        args = [f"-DPython_EXECUTABLE={sys.executable}", f"-Dpybind11_DIR={pybind11.get_cmake_dir()}",
                "-DCMAKE_BUILD_TYPE=Release", f"-DCOGVIDEO_VERSION={read_version()}",
                f"-DCOGVIDEO_CUDA={cuda}", f"-DCOGVIDEO_CUDA_ARCHS={archs}",
                f"-DCOGVIDEO_NATIVE={'ON' if env_flag('COGVIDEO_NATIVE', '0') == 'ON' else 'OFF'}",
                f"-DCOGVIDEO_BUILD_TESTS={'ON' if env_flag('COGVIDEO_BUILD_TESTS', '0') == 'ON' else 'OFF'}"]
        if shutil.which("ninja") and not (build_dir / "CMakeCache.txt").exists():
            args += ["-G", "Ninja"]  # (a kept tree keeps its generator)
        subprocess.check_call([cmake, "-S", str(ROOT), "-B", str(build_dir), *args])
        subprocess.check_call([cmake, "--build", str(build_dir), "-j", str(os.cpu_count() or 2)])
        built = next(build_dir.glob("_C*.so"))
        target = Path(self.get_ext_fullpath(ext.name))
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(built, target)
        latest = ROOT / "build" / "cmake"  # the tree the test script runs ctest in
        if latest.is_symlink() or not latest.exists():
            if latest.is_symlink():
                latest.unlink()
            latest.symlink_to(build_dir.name)


class SDist(sdist):
    """The source distribution also holds what the extension is built from (CMakeLists.txt, csrc/), so a wheel
    builds from it."""

    def make_release_tree(self, base_dir, files):
        extra = ["CMakeLists.txt"] + [p.relative_to(ROOT).as_posix() for p in sorted((ROOT / "csrc").rglob("*"))
                                      if p.is_file()]
        super().make_release_tree(base_dir, list(files) + [f for f in extra if f not in files])


SERVE = ["starlette>=0.37", "uvicorn>=0.29", "prometheus-client>=0.20", "python-multipart>=0.0.9"]
RAY_SERVE = "ray[serve]>=2.60"  # the ingress builds its ASGI app late (__serve_build_asgi_app__); 2.60 tested
ext_modules = [] if os.environ.get("COGVIDEO_NO_EXT") == "1" else [CMakeExtension("cogvideo_engine._C")]

setup(
    name="cogvideo-engine",
    version=read_version(),
    description="Fast, faithful inference engine for the original CogVideo (2022) text-to-video model",
    license="Apache-2.0",
    license_files=["LICENSE"],
    python_requires=">=3.10",
    packages=find_packages_in_tree(),
    package_dir=PACKAGE_ROOTS,
    package_data={"cogvideo_engine.service": ["static/*.html"]},  # the playground page
    ext_modules=ext_modules,
    cmdclass={"build_ext": CMakeBuild, "sdist": SDist},
    # torch is deliberately a floor, not a pin: install torch first (see README) so pip never pulls a CUDA build.
    install_requires=["torch>=2.6", "numpy", "safetensors", "sentencepiece", "pillow", "tqdm"],
    # triton runs the fused kernels on CUDA (3.6 and later: the compile test checks 3.6 and 3.9), and on CPU under
    # TRITON_INTERPRET=1 (the tests; 3.9: older interpreters fail on the window kernel).
    extras_require={"triton": ["triton>=3.6"], "mp4": ["imageio-ffmpeg"],
                    "serve": SERVE,  # python -m cogvideo_engine serve
                    "ray": [*SERVE, RAY_SERVE],  # serve run cogvideo_engine.service.ray_app:build (replicas)
                    "bench": ["matplotlib"],  # bench/plot_serving.py
                    # setuptools: the GPU check's dry run (a test) installs the package without build isolation
                    # httpx, selenium: the service's tests (a real server, a headless browser on the playground)
                    # triton 3.9.*: the interpreter the CPU suite runs, and the compiler whose register and spill
                    # report tests/kernels/test_gpu_compile.py checks (another version allocates differently)
                    "test": ["pytest>=7", "pytest-benchmark", "triton>=3.9,<3.10", "ruff==0.17.6", "setuptools>=70.1",
                             *SERVE, RAY_SERVE, "httpx", "selenium", "imageio-ffmpeg"]},
    entry_points={"console_scripts": ["cogvideo-engine=cogvideo_engine.cli:main"]},
)
