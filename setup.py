"""Builds engine._native (C++17, pybind11, OpenMP) from csrc/."""
import glob
import importlib.util
from pathlib import Path

from pybind11.setup_helpers import Pybind11Extension, build_ext
from setuptools import find_packages, setup


def jpeg_headers() -> list[str]:
    """A folder with libjpeg-turbo's jpeglib.h and jmorecfg.h, for csrc/jpeg.cpp's struct layouts:
    the copy TensorFlow's wheel installs (requirements.txt), else the system's. The library itself is
    loaded at run time (engine.jpeg_tiles). Without one the native JPEG path is left out and the
    tiler decodes through tifffile."""
    spec = importlib.util.find_spec("tensorflow")
    roots = [Path(p) / "include" / "external" / "libjpeg_turbo" for p in (spec.submodule_search_locations or [])] if spec else []
    for d in [*roots, Path("/usr/include")]:
        if (d / "jpeglib.h").is_file() and (d / "jmorecfg.h").is_file():
            return [str(d)]
    print("setup.py: no jpeglib.h found; engine._native is built without the batch JPEG decode")
    return []


JPEG = jpeg_headers()
native = Pybind11Extension(
    "engine._native",
    sorted(glob.glob("csrc/*.cpp")),
    include_dirs=["csrc"],
    cxx_std=17,
    extra_compile_args=["-O3", "-fopenmp"] + [f"-I{d}" for d in JPEG],
    extra_link_args=["-fopenmp", "-ldl"],
    define_macros=[("HISTOGEN_JPEG", "1")] if JPEG else [],
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
