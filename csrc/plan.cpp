// Tissue fraction of level-0 boxes measured on a low-resolution mask.
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>

#include <algorithm>
#include <cstdint>
#include <stdexcept>
#include <vector>

#include "native.hpp"

namespace py = pybind11;

namespace histogen {
namespace {

// Level-0 coordinate -> mask coordinate, round-half-up of v*m/L in integers.
inline int64_t to_mask(int64_t v, int64_t m, int64_t level0) {
  return std::clamp<int64_t>((2 * v * m + level0) / (2 * level0), 0, m);
}

// boxes (N,4) int64 as x, y, w, h in level-0 pixels (non-negative).
py::array_t<float> tile_fractions(py::array_t<uint8_t, py::array::c_style> mask,
                                  int64_t width0, int64_t height0,
                                  py::array_t<int64_t, py::array::c_style> boxes) {
  if (mask.ndim() != 2) throw std::invalid_argument("mask must have shape (H, W)");
  if (boxes.ndim() != 2 || boxes.shape(1) != 4)
    throw std::invalid_argument("boxes must have shape (N, 4)");
  if (width0 <= 0 || height0 <= 0) throw std::invalid_argument("level0 size must be positive");
  const int64_t mh = mask.shape(0), mw = mask.shape(1), n = boxes.shape(0);
  const uint8_t* m = mask.data();
  const int64_t* b = boxes.data();
  py::array_t<float> fractions(n);
  float* out = fractions.mutable_data();
  {
    py::gil_scoped_release release;
    // Summed-area table with a zero first row/column: sat[y][x] = sum m[<y][<x].
    const int64_t sw = mw + 1;
    std::vector<int64_t> sat(static_cast<size_t>((mh + 1) * sw), 0);
#pragma omp parallel for schedule(static)
    for (int64_t y = 0; y < mh; ++y) {
      int64_t* row = sat.data() + (y + 1) * sw;
      const uint8_t* src = m + y * mw;
      for (int64_t x = 0; x < mw; ++x) row[x + 1] = row[x] + (src[x] == 1);  // 2 is ink, not tissue
    }
    for (int64_t y = 1; y <= mh; ++y) {
      int64_t* row = sat.data() + y * sw;
      const int64_t* prev = row - sw;
      for (int64_t x = 1; x <= mw; ++x) row[x] += prev[x];
    }
#pragma omp parallel for schedule(static)
    for (int64_t i = 0; i < n; ++i) {
      const int64_t* box = b + 4 * i;
      const int64_t x0 = to_mask(box[0], mw, width0), x1 = to_mask(box[0] + box[2], mw, width0);
      const int64_t y0 = to_mask(box[1], mh, height0), y1 = to_mask(box[1] + box[3], mh, height0);
      const int64_t area = (x1 - x0) * (y1 - y0);
      if (area <= 0) {
        out[i] = 0.0f;
        continue;
      }
      const int64_t sum = sat[y1 * sw + x1] - sat[y0 * sw + x1] - sat[y1 * sw + x0] + sat[y0 * sw + x0];
      out[i] = static_cast<float>(static_cast<double>(sum) / static_cast<double>(area));
    }
  }
  return fractions;
}

}  // namespace

void register_plan(py::module_& m) {
  m.def("tile_fractions", &tile_fractions, py::arg("mask"), py::arg("width0"),
        py::arg("height0"), py::arg("boxes"),
        "Fraction of mask pixels set inside each level-0 box (x, y, w, h).");
}

}  // namespace histogen
