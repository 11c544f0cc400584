"""Builds engine._native (C++17, pybind11, OpenMP) from csrc/."""
import glob

from pybind11.setup_helpers import Pybind11Extension, build_ext
from setuptools import find_packages, setup

native = Pybind11Extension(
    "engine._native",
    sorted(glob.glob("csrc/*.cpp")),
    include_dirs=["csrc"],
    cxx_std=17,
    extra_compile_args=["-O3", "-fopenmp"],
    extra_link_args=["-fopenmp"],
)

setup(
    name="histogen",
    version="0.1.0",
    description="Whole-slide images to patch stores, embeddings and generative models of histopathology",
    packages=find_packages(include=["engine", "engine.*", "histogen", "histogen.*", "histosynth", "histosynth.*"]),
    ext_modules=[native],
    cmdclass={"build_ext": build_ext},
    entry_points={"console_scripts": ["histogen=histogen.cli:main"]},
    package_data={"histogen": ["presets/*.yaml"], "engine.fetch": ["study.yaml"]},
    python_requires=">=3.10",
)
