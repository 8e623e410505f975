"""Install ``engine/`` as ``cogvideo_engine`` and ``kernels/`` as ``cogvideo_engine.kernels``, and build the
csrc kernels (``cogvideo_engine._C``) with CMake + Ninja.

CPU kernels always; CUDA kernels when nvcc is found (or ``COGVIDEO_CUDA_ARCHS`` is set, default ``80;90``).
``COGVIDEO_NO_EXT=1`` gives a pure-Python install. The CMake build tree is kept in ``build/cmake`` so
rebuilds are incremental and ``ctest --test-dir build/cmake`` runs the C++ tests.
"""

import os
import shutil
import subprocess
import sys
from pathlib import Path

from setuptools import Extension, setup
from setuptools.command.build_ext import build_ext

ROOT = Path(__file__).resolve().parent


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
        args = [f"-DPython_EXECUTABLE={sys.executable}", f"-Dpybind11_DIR={pybind11.get_cmake_dir()}",
                "-DCMAKE_BUILD_TYPE=Release"]
        if shutil.which("ninja"):
            args += ["-G", "Ninja"]
        if os.environ.get("COGVIDEO_CUDA_ARCHS"):
            args += [f"-DCOGVIDEO_CUDA_ARCHS={os.environ['COGVIDEO_CUDA_ARCHS']}", "-DCOGVIDEO_CUDA=ON"]
        if os.environ.get("COGVIDEO_NATIVE") == "0":
            args += ["-DCOGVIDEO_NATIVE=OFF"]
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


ext_modules = [] if os.environ.get("COGVIDEO_NO_EXT") == "1" else [CMakeExtension("cogvideo_engine._C")]

setup(
    name="cogvideo-engine",
    version="0.1.0",
    description="Fast, faithful inference engine for the original CogVideo (2022) text-to-video model",
    python_requires=">=3.10",
    packages=["cogvideo_engine", "cogvideo_engine.kernels"],
    package_dir={"cogvideo_engine": "engine", "cogvideo_engine.kernels": "kernels"},
    ext_modules=ext_modules,
    cmdclass={"build_ext": CMakeBuild},
    # torch is deliberately a floor, not a pin: install torch first (see README) so pip never pulls a CUDA build.
    install_requires=["torch>=2.6", "numpy", "safetensors", "sentencepiece", "pillow", "tqdm"],
    # triton runs the fused kernels on CUDA, and on CPU under TRITON_INTERPRET=1 (the tests).
    extras_require={"triton": ["triton>=3.2"], "mp4": ["imageio-ffmpeg"],
                    # setuptools: the GPU check's dry run (a test) installs the package without build isolation
                    "test": ["pytest>=7", "pytest-benchmark", "triton>=3.2", "ruff==0.17.6", "setuptools>=70.1"]},
    entry_points={"console_scripts": ["cogvideo-engine=cogvideo_engine.cli:main"]},
)
