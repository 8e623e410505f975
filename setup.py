"""Install ``engine/`` as ``cogvideo_engine`` and ``kernels/`` as ``cogvideo_engine.kernels``.

The csrc extension (``cogvideo_engine._C``) is built here by CMake once csrc/ has sources;
``COGVIDEO_NO_EXT=1`` always gives a pure-Python install.
"""

from setuptools import setup

setup(
    name="cogvideo-engine",
    version="0.1.0",
    description="Fast, faithful inference engine for the original CogVideo (2022) text-to-video model",
    python_requires=">=3.10",
    packages=["cogvideo_engine", "cogvideo_engine.kernels"],
    package_dir={"cogvideo_engine": "engine", "cogvideo_engine.kernels": "kernels"},
    # torch is deliberately a floor, not a pin: install torch first (see README) so pip never pulls a CUDA build.
    install_requires=["torch>=2.6", "numpy", "safetensors"],
    # triton runs the fused kernels on CUDA, and on CPU under TRITON_INTERPRET=1 (the tests).
    extras_require={"triton": ["triton>=3.2"], "test": ["pytest>=7", "pytest-benchmark", "triton>=3.2"]},
    entry_points={"console_scripts": ["cogvideo-engine=cogvideo_engine.cli:main"]},
)
