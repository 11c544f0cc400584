// Thumbnail mask (0 background, 1 tissue, 2 ink): Otsu on saturation, morphology,
// hole fill that never crosses ink, speck removal.
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>

#include <algorithm>
#include <array>
#include <cstdint>
#include <stdexcept>
#include <vector>

#include "morph.hpp"
#include "native.hpp"
#include "pixel.hpp"

namespace py = pybind11;

namespace histogen {
namespace {

using Hist = std::array<int64_t, 256>;

// Saturation histogram of candidate pixels and the number of ink (dark or pen) pixels.
void saturation_histogram(const uint8_t* rgb, int64_t n, const PixelRule& rule,
                          Hist& hist, int64_t& pen) {
  hist.fill(0);
  pen = 0;
#pragma omp parallel
  {
    Hist local{};
    int64_t local_pen = 0;
#pragma omp for schedule(static) nowait
    for (int64_t i = 0; i < n; ++i) {
      const uint8_t* p = rgb + 3 * i;
      const PixelClass c = classify(p[0], p[1], p[2], rule);
      if (c == kCandidate) ++local[saturation(p[0], p[1], p[2])];
      else if (c == kPen || c == kDark) ++local_pen;
    }
#pragma omp critical
    {
      for (int k = 0; k < 256; ++k) hist[k] += local[k];
      pen += local_pen;
    }
  }
}

// Otsu: class 0 is sat < t, class 1 is sat >= t (the tissue side). Maximises
// (n1*s0 - n0*s1)^2 / (n0*n1), proportional to between-class variance; the
// numerator is exact in int64 and the double part is mul/div only so the numpy
// reference rounds identically. Ties -> smallest t. Returns -1 if empty.
int otsu(const Hist& hist) {
  int64_t total = 0, sum = 0;
  for (int v = 0; v < 256; ++v) {
    total += hist[v];
    sum += v * hist[v];
  }
  if (total == 0) return -1;
  int64_t n0 = 0, s0 = 0;
  double best = -1.0;
  int best_t = -1;
  for (int t = 1; t < 256; ++t) {
    n0 += hist[t - 1];
    s0 += (t - 1) * hist[t - 1];
    const int64_t n1 = total - n0, s1 = sum - s0;
    if (n0 == 0 || n1 == 0) continue;
    const double a = static_cast<double>(n1 * s0 - n0 * s1);
    const double score = a * a / (static_cast<double>(n0) * static_cast<double>(n1));
    if (score > best) {
      best = score;
      best_t = t;
    }
  }
  if (best_t >= 0) return best_t;
  for (int v = 0; v < 256; ++v)  // a single occupied bin: threshold at it
    if (hist[v] > 0) return v;
  return -1;
}

// Labels the connected components of pixels equal to `value` (flood fill;
// components are inherently sequential so this stays single-threaded).
// label[i] = component id or -1; area and border-or-ink contact per component
// (a neighbour, in the same connectivity, of value 2 is ink).
void components(const uint8_t* m, int64_t h, int64_t w, uint8_t value, bool eight,
                std::vector<int32_t>& label, std::vector<int64_t>& area,
                std::vector<uint8_t>& border) {
  label.assign(static_cast<size_t>(h * w), -1);
  area.clear();
  border.clear();
  std::vector<int64_t> stack;
  for (int64_t start = 0; start < h * w; ++start) {
    if (m[start] != value || label[start] >= 0) continue;
    const int32_t id = static_cast<int32_t>(area.size());
    int64_t count = 0;
    bool touches = false;
    label[start] = id;
    stack.push_back(start);
    while (!stack.empty()) {
      const int64_t i = stack.back();
      stack.pop_back();
      ++count;
      const int64_t y = i / w, x = i % w;
      if (y == 0 || x == 0 || y == h - 1 || x == w - 1) touches = true;
      for (int64_t dy = -1; dy <= 1; ++dy) {
        for (int64_t dx = -1; dx <= 1; ++dx) {
          if ((dy == 0 && dx == 0) || (!eight && dy != 0 && dx != 0)) continue;
          const int64_t ny = y + dy, nx = x + dx;
          if (ny < 0 || nx < 0 || ny >= h || nx >= w) continue;
          const int64_t j = ny * w + nx;
          if (m[j] == 2) touches = true;
          if (m[j] == value && label[j] < 0) {
            label[j] = id;
            stack.push_back(j);
          }
        }
      }
    }
    area.push_back(count);
    border.push_back(touches);
  }
}

// Background (4-connected) enclosed by tissue alone (touching neither the border
// nor ink); max_area 0 = no size limit.
void fill_holes(uint8_t* m, int64_t h, int64_t w, int64_t max_area) {
  std::vector<int32_t> label;
  std::vector<int64_t> area;
  std::vector<uint8_t> border;
  components(m, h, w, 0, false, label, area, border);
  for (int64_t i = 0; i < h * w; ++i) {
    const int32_t id = label[i];
    if (id >= 0 && !border[id] && (max_area == 0 || area[id] <= max_area)) m[i] = 1;
  }
}

// Tissue (8-connected) specks with area < min_area.
void remove_small(uint8_t* m, int64_t h, int64_t w, int64_t min_area) {
  if (min_area <= 1) return;
  std::vector<int32_t> label;
  std::vector<int64_t> area;
  std::vector<uint8_t> border;
  components(m, h, w, 1, true, label, area, border);
  for (int64_t i = 0; i < h * w; ++i)
    if (label[i] >= 0 && area[label[i]] < min_area) m[i] = 0;
}

// Returns (mask uint8 (H,W) of 0/1/2, threshold, ink_count). saturation < 0 means Otsu.
py::tuple tissue_mask(py::array_t<uint8_t, py::array::c_style> rgb,
                      py::array_t<int32_t, py::array::c_style> od_lut, int white, int dark,
                      int saturation_t, int min_saturation, int max_saturation,
                      int close_radius, int open_radius, int ink_speck_radius, int ink_region_radius,
                      int64_t max_hole_area,
                      int64_t min_object_area, int inks) {
  if (rgb.ndim() != 3 || rgb.shape(2) != 3)
    throw std::invalid_argument("rgb must have shape (H, W, 3)");
  if (od_lut.ndim() != 1 || od_lut.shape(0) != 256)
    throw std::invalid_argument("od_lut must have 256 entries");
  const int64_t h = rgb.shape(0), w = rgb.shape(1), n = h * w;
  const PixelRule rule{white, dark, od_lut.data(), inks};
  const uint8_t* src = rgb.data();
  py::array_t<uint8_t> mask({h, w});
  uint8_t* out = mask.mutable_data();
  int threshold = 0;
  int64_t pen = 0;
  {
    py::gil_scoped_release release;
    Hist hist;
    saturation_histogram(src, n, rule, hist, pen);
    if (saturation_t >= 0) {
      threshold = saturation_t;
    } else {
      const int t = otsu(hist);
      threshold = t < 0 ? min_saturation : std::clamp(t, min_saturation, max_saturation);
    }
    std::vector<uint8_t> ink(static_cast<size_t>(n)), bluish(static_cast<size_t>(n));
#pragma omp parallel for schedule(static)
    for (int64_t i = 0; i < n; ++i) {
      const uint8_t* p = src + 3 * i;
      const PixelClass c = classify(p[0], p[1], p[2], rule);
      out[i] = c == kCandidate && saturation(p[0], p[1], p[2]) >= threshold;
      ink[i] = c == kPen || c == kDark;
      bluish[i] = ink_region_radius > 0 && is_bluish_od(rule.od[p[0]], rule.od[p[1]], rule.od[p[2]]);
    }
    closing(out, h, w, close_radius);
    opening(out, h, w, open_radius);
    // Ink: an opening first drops the scattered stain pixels the rule takes for
    // ink (else the closing joins them into blobs), the same closing as tissue
    // joins a stroke across pixels the rule missed, the opening trims; ink wins.
    opening(ink.data(), h, w, ink_speck_radius);
    // Thinned blue ink looks like haematoxylin pixel by pixel; a wide, uniformly bluish region is ink.
    region_opening(bluish.data(), h, w, ink_region_radius);
    for (int64_t i = 0; i < n; ++i) ink[i] |= bluish[i];
    closing(ink.data(), h, w, close_radius);
    opening(ink.data(), h, w, open_radius);
    for (int64_t i = 0; i < n; ++i)
      if (ink[i]) out[i] = 2;
    fill_holes(out, h, w, max_hole_area);
    remove_small(out, h, w, min_object_area);
  }
  return py::make_tuple(mask, threshold, pen);
}

}  // namespace

void register_mask(py::module_& m) {
  m.def("tissue_mask", &tissue_mask, py::arg("rgb"), py::arg("od_lut"), py::arg("white"),
        py::arg("dark"), py::arg("saturation"), py::arg("min_saturation"),
        py::arg("max_saturation"), py::arg("close_radius"), py::arg("open_radius"), py::arg("ink_speck_radius"),
        py::arg("ink_region_radius"), py::arg("max_hole_area"), py::arg("min_object_area"), py::arg("inks"),
        "Mask (0 background, 1 tissue, 2 ink) of an RGB thumbnail -> (mask, threshold, ink_count).");
}

}  // namespace histogen
