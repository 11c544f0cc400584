// Per-patch quality scores of decoded patches, laid out as engine.qc.SCORES (scores.hpp, generated).
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>

#include <cstdint>
#include <stdexcept>
#include <vector>

#include "morph.hpp"
#include "native.hpp"
#include "pixel.hpp"
#include "scores.hpp"

namespace py = pybind11;

namespace histogen {
namespace {

struct QCRule {
  PixelRule pixel;
  int threshold;    // tissue saturation threshold (the slide's mask threshold)
  int step;         // sub-grid of rows/cols 0, step, 2*step, ...
  int ink_radius;   // opening/closing radius of ink on the sub-grid
  int ink_region_radius;  // bluish regions filling a (2r+1) square of the sub-grid are ink; 0 = off
  int focus_step;   // focus on rows 4, 4 + focus_step, ...
  int focus_detail; // an edge: a grey-level (R+G+B) Laplacian at distance 2 of at least this
  int32_t fold_od;  // tissue with OD sum (R+G+B) above this is fold / over-stain
  int grey_max;     // low-saturation pixels with max channel < this are bubble rims
};

// Laplacian energy of the red-channel optical density (mostly haematoxylin) at distance 2 over the
// same at distance 4, centres on every focus_step-th row and every column. Distance 1 is left out:
// JPEG and rounding noise dominate it and keep blurred patches looking sharp. A sharp patch gives
// about 1 / 4 or more, one blurred by a Gaussian of sigma 2 px tends to 1 / 16 or less.
// A patch with fewer than kFocusEdges edges (focus_detail) scores 0: heavily blurred ink or stain is
// noise at every scale, which keeps the ratio high, and nothing in such a patch is in focus.
constexpr int kFocusEdges = 3;  // not 1: a speck of dust is no edge of the tissue

inline int grey(const uint8_t* p) { return p[0] + p[1] + p[2]; }

float focus(const uint8_t* patch, int64_t h, int64_t w, int step, int detail, const int32_t* od) {
  if (h < 9 || w < 9) return 1.0f;
  int64_t fine = 0, coarse = 0;
  int edges = 0;
  const int64_t row = 3 * w;
  for (int64_t y = 4; y < h - 4; y += step) {
    const uint8_t* c = patch + y * row;
    for (int64_t x = 4; x < w - 4; ++x) {
      const uint8_t* p = c + 3 * x;
      const int64_t v = 4 * od[p[0]];
      const int64_t l2 = v - od[p[-6]] - od[p[6]] - od[p[-2 * row]] - od[p[2 * row]];
      const int64_t l4 = v - od[p[-12]] - od[p[12]] - od[p[-4 * row]] - od[p[4 * row]];
      fine += l2 * l2;
      coarse += l4 * l4;
      if (edges < kFocusEdges) {
        const int g = 4 * grey(p) - grey(p - 6) - grey(p + 6) - grey(p - 2 * row) - grey(p + 2 * row);
        edges += g >= detail || -g >= detail;
      }
    }
  }
  if (edges < kFocusEdges) return 0.0f;
  return coarse == 0 ? 1.0f : static_cast<float>(static_cast<double>(fine) / static_cast<double>(coarse));
}

void patch_scores(const uint8_t* patch, int64_t h, int64_t w, const QCRule& q, float* out) {
  const int64_t gh = (h + q.step - 1) / q.step, gw = (w + q.step - 1) / q.step, n = gh * gw;
  std::vector<uint8_t> tissue(static_cast<size_t>(n)), ink(static_cast<size_t>(n)),
      fold(static_cast<size_t>(n)), bluish(static_cast<size_t>(n));
  int64_t bubble = 0;
  for (int64_t gy = 0; gy < gh; ++gy) {
    for (int64_t gx = 0; gx < gw; ++gx) {
      const uint8_t* p = patch + (gy * q.step * w + gx * q.step) * 3;
      const int64_t i = gy * gw + gx;
      const PixelClass c = classify(p[0], p[1], p[2], q.pixel);
      const int sat = saturation(p[0], p[1], p[2]);
      ink[i] = c == kPen || c == kDark;
      bluish[i] = q.ink_region_radius > 0 && is_bluish_od(q.pixel.od[p[0]], q.pixel.od[p[1]], q.pixel.od[p[2]]);
      tissue[i] = c == kCandidate && sat >= q.threshold;
      fold[i] = q.pixel.od[p[0]] + q.pixel.od[p[1]] + q.pixel.od[p[2]] > q.fold_od;
      bubble += c == kCandidate && sat < q.threshold &&
                std::max<int>(p[0], std::max<int>(p[1], p[2])) < q.grey_max;
    }
  }
  opening(ink.data(), gh, gw, q.ink_radius);  // lone false-ink pixels go first,
  region_opening(bluish.data(), gh, gw, q.ink_region_radius);  // thinned blue ink: wide uniform bluish regions,
  for (int64_t i = 0; i < n; ++i) ink[i] |= bluish[i];
  closing(ink.data(), gh, gw, q.ink_radius);  // then a stroke is joined across its tissue
  int64_t nt = 0, ni = 0, nf = 0;
  for (int64_t i = 0; i < n; ++i) {
    ni += ink[i];
    const bool t = tissue[i] && !ink[i];
    nt += t;
    nf += t && fold[i];
  }
  const double size = static_cast<double>(n);
  out[kScoreTissue] = n ? static_cast<float>(nt / size) : 0.0f;
  out[kScoreInk] = n ? static_cast<float>(ni / size) : 0.0f;
  out[kScoreFocus] = focus(patch, h, w, q.focus_step, q.focus_detail, q.pixel.od);
  out[kScoreFold] = nt ? static_cast<float>(static_cast<double>(nf) / static_cast<double>(nt)) : 0.0f;
  out[kScoreBubble] = n ? static_cast<float>(bubble / size) : 0.0f;
  out[kScoreClean] = n ? static_cast<float>((nt - nf) / size) : 0.0f;
}

// patches (N,H,W,3) uint8 -> scores (N, kScoreCount) float32, columns in the order of engine.qc.SCORES.
py::array_t<float> patch_qc(py::array_t<uint8_t, py::array::c_style> patches,
                            py::array_t<int32_t, py::array::c_style> od_lut, int threshold,
                            int white, int dark, int step, int ink_radius, int ink_region_radius, int focus_step,
                            int focus_detail, int fold_od, int grey_max, int inks) {
  if (patches.ndim() != 4 || patches.shape(3) != 3)
    throw std::invalid_argument("patches must have shape (N, H, W, 3)");
  if (od_lut.ndim() != 1 || od_lut.shape(0) != 256)
    throw std::invalid_argument("od_lut must have 256 entries");
  if (step < 1 || focus_step < 1) throw std::invalid_argument("step and focus_step must be >= 1");
  const int64_t n = patches.shape(0), h = patches.shape(1), w = patches.shape(2);
  const QCRule q{{white, dark, od_lut.data(), inks}, threshold, step, ink_radius, ink_region_radius, focus_step,
                  focus_detail, fold_od, grey_max};
  const uint8_t* src = patches.data();
  py::array_t<float> scores({n, static_cast<int64_t>(kScoreCount)});
  float* out = scores.mutable_data();
  {
    py::gil_scoped_release release;
#pragma omp parallel for schedule(dynamic, 1)
    for (int64_t i = 0; i < n; ++i) patch_scores(src + i * h * w * 3, h, w, q, out + kScoreCount * i);
  }
  return scores;
}

}  // namespace

void register_check(py::module_& m) {
  m.def("patch_qc", &patch_qc, py::arg("patches"), py::arg("od_lut"), py::arg("threshold"),
        py::arg("white"), py::arg("dark"), py::arg("step"), py::arg("ink_radius"), py::arg("ink_region_radius"),
        py::arg("focus_step"), py::arg("focus_detail"),
        py::arg("fold_od"), py::arg("grey_max"), py::arg("inks"),
        "Scores (N, len(PATCH_SCORES)) of each patch, a column per name of PATCH_SCORES.");
  // The layout this build has: engine.check refuses a build older than engine.qc.SCORES.
  py::tuple names(static_cast<size_t>(kScoreCount));
  for (int k = 0; k < kScoreCount; ++k) names[k] = kScoreNames[k];
  m.attr("PATCH_SCORES") = names;
}

}  // namespace histogen
