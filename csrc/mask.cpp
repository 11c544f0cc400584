// Thumbnail tissue mask: Otsu on saturation, morphology, hole fill, speck removal.
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>

#include <algorithm>
#include <array>
#include <cstdint>
#include <stdexcept>
#include <vector>

#include "native.hpp"
#include "pixel.hpp"

namespace py = pybind11;

namespace histogen {
namespace {

using Hist = std::array<int64_t, 256>;

// Saturation histogram of candidate pixels and the number of pen pixels.
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
      else if (c == kPen) ++local_pen;
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

// Square (2r+1) dilation/erosion of a 0/1 image, separable via running counts.
// Only in-image pixels are counted, which is the same as padding with 0 for
// dilation (any 1 -> 1) and with 1 for erosion (all in-image 1 -> 1).
void morph(uint8_t* m, int64_t h, int64_t w, int r, bool dilate) {
  if (r <= 0) return;
  std::vector<uint8_t> tmp(static_cast<size_t>(h * w));
  // Rows: m -> tmp.
#pragma omp parallel
  {
    std::vector<int32_t> pre(static_cast<size_t>(w + 1));
#pragma omp for schedule(static)
    for (int64_t y = 0; y < h; ++y) {
      const uint8_t* row = m + y * w;
      pre[0] = 0;
      for (int64_t x = 0; x < w; ++x) pre[x + 1] = pre[x] + row[x];
      uint8_t* out = tmp.data() + y * w;
      for (int64_t x = 0; x < w; ++x) {
        const int64_t lo = std::max<int64_t>(0, x - r), hi = std::min<int64_t>(w - 1, x + r);
        const int32_t c = pre[hi + 1] - pre[lo];
        out[x] = dilate ? (c > 0) : (c == hi - lo + 1);
      }
    }
  }
  // Columns: tmp -> m, via per-column prefix counts laid out row-major.
  std::vector<int32_t> pre(static_cast<size_t>((h + 1) * w), 0);
  for (int64_t y = 0; y < h; ++y) {
    const int32_t* prev = pre.data() + y * w;
    int32_t* cur = pre.data() + (y + 1) * w;
    const uint8_t* row = tmp.data() + y * w;
    for (int64_t x = 0; x < w; ++x) cur[x] = prev[x] + row[x];
  }
#pragma omp parallel for schedule(static)
  for (int64_t y = 0; y < h; ++y) {
    const int64_t lo = std::max<int64_t>(0, y - r), hi = std::min<int64_t>(h - 1, y + r);
    const int32_t* a = pre.data() + lo * w;
    const int32_t* b = pre.data() + (hi + 1) * w;
    const int32_t full = static_cast<int32_t>(hi - lo + 1);
    uint8_t* out = m + y * w;
    for (int64_t x = 0; x < w; ++x) {
      const int32_t c = b[x] - a[x];
      out[x] = dilate ? (c > 0) : (c == full);
    }
  }
}

// Labels the connected components of pixels equal to `value` (flood fill;
// components are inherently sequential so this stays single-threaded).
// label[i] = component id or -1; area and border-contact per component.
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

// Background (4-connected) enclosed by tissue; max_area 0 = no size limit.
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

// Returns (mask uint8 (H,W), threshold, pen_count). saturation < 0 means Otsu.
py::tuple tissue_mask(py::array_t<uint8_t, py::array::c_style> rgb, int white, int dark,
                      int pen_margin, int saturation_t, int min_saturation,
                      int max_saturation, int close_radius, int open_radius,
                      int64_t max_hole_area, int64_t min_object_area) {
  if (rgb.ndim() != 3 || rgb.shape(2) != 3)
    throw std::invalid_argument("rgb must have shape (H, W, 3)");
  const int64_t h = rgb.shape(0), w = rgb.shape(1), n = h * w;
  const PixelRule rule{white, dark, pen_margin};
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
#pragma omp parallel for schedule(static)
    for (int64_t i = 0; i < n; ++i) {
      const uint8_t* p = src + 3 * i;
      out[i] = is_tissue(p[0], p[1], p[2], rule, threshold);
    }
    morph(out, h, w, close_radius, true);  // closing
    morph(out, h, w, close_radius, false);
    morph(out, h, w, open_radius, false);  // opening
    morph(out, h, w, open_radius, true);
    fill_holes(out, h, w, max_hole_area);
    remove_small(out, h, w, min_object_area);
  }
  return py::make_tuple(mask, threshold, pen);
}

}  // namespace

void register_mask(py::module_& m) {
  m.def("tissue_mask", &tissue_mask, py::arg("rgb"), py::arg("white"), py::arg("dark"),
        py::arg("pen_margin"), py::arg("saturation"), py::arg("min_saturation"),
        py::arg("max_saturation"), py::arg("close_radius"), py::arg("open_radius"),
        py::arg("max_hole_area"), py::arg("min_object_area"),
        "Tissue mask of an RGB thumbnail -> (mask, threshold, pen_count); saturation < 0 = Otsu.");
}

}  // namespace histogen
