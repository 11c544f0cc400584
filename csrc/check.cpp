// Fast full-resolution tissue fraction of decoded patches on a sub-grid.
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>

#include <cstdint>
#include <stdexcept>

#include "native.hpp"
#include "pixel.hpp"

namespace py = pybind11;

namespace histogen {
namespace {

// patches (N,H,W,3) uint8; samples rows/cols 0, step, 2*step, ...
py::array_t<float> patch_tissue(py::array_t<uint8_t, py::array::c_style> patches,
                                int threshold, int white, int dark, int pen_margin,
                                int step) {
  if (patches.ndim() != 4 || patches.shape(3) != 3)
    throw std::invalid_argument("patches must have shape (N, H, W, 3)");
  if (step < 1) throw std::invalid_argument("step must be >= 1");
  const int64_t n = patches.shape(0), h = patches.shape(1), w = patches.shape(2);
  const PixelRule rule{white, dark, pen_margin};
  const uint8_t* src = patches.data();
  py::array_t<float> fractions(n);
  float* out = fractions.mutable_data();
  {
    py::gil_scoped_release release;
    const int64_t sampled = ((h + step - 1) / step) * ((w + step - 1) / step);
#pragma omp parallel for schedule(dynamic, 1)
    for (int64_t i = 0; i < n; ++i) {
      const uint8_t* patch = src + i * h * w * 3;
      int64_t count = 0;
      for (int64_t y = 0; y < h; y += step) {
        const uint8_t* row = patch + y * w * 3;
        for (int64_t x = 0; x < w; x += step) {
          const uint8_t* p = row + 3 * x;
          count += is_tissue(p[0], p[1], p[2], rule, threshold);
        }
      }
      out[i] = sampled > 0 ? static_cast<float>(static_cast<double>(count) / static_cast<double>(sampled))
                           : 0.0f;
    }
  }
  return fractions;
}

}  // namespace

void register_check(py::module_& m) {
  m.def("patch_tissue", &patch_tissue, py::arg("patches"), py::arg("threshold"),
        py::arg("white"), py::arg("dark"), py::arg("pen_margin"), py::arg("step"),
        "Tissue fraction of each patch on the sub-grid of every step-th row/column.");
}

}  // namespace histogen
