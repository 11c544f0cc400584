// Square-element binary morphology shared by the mask and check kernels.
#pragma once

#include <algorithm>
#include <cstdint>
#include <vector>

namespace histogen {

// Square (2r+1) dilation/erosion of a 0/1 image, separable via running counts.
// Only in-image pixels are counted, which is the same as padding with 0 for
// dilation (any 1 -> 1) and with 1 for erosion (all in-image 1 -> 1); with
// pad_zero an erosion needs the whole window inside the image (padding with 0).
inline void morph(uint8_t* m, int64_t h, int64_t w, int r, bool dilate, bool pad_zero = false) {
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
        out[x] = dilate ? (c > 0) : (c == (pad_zero ? 2 * r + 1 : hi - lo + 1));
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
    const int32_t full = static_cast<int32_t>(pad_zero ? 2 * r + 1 : hi - lo + 1);
    uint8_t* out = m + y * w;
    for (int64_t x = 0; x < w; ++x) {
      const int32_t c = b[x] - a[x];
      out[x] = dilate ? (c > 0) : (c == full);
    }
  }
}

// Opening (lone pixels go) and closing (gaps are joined), as the numpy references'
// opening_reference / closing_reference.
inline void opening(uint8_t* m, int64_t h, int64_t w, int r) {
  morph(m, h, w, r, false);
  morph(m, h, w, r, true);
}

// Opening whose erosion pads with 0: only regions that fit the whole window inside
// the image survive, so a blob cut by the border does not pass for a wide one.
inline void region_opening(uint8_t* m, int64_t h, int64_t w, int r) {
  morph(m, h, w, r, false, true);
  morph(m, h, w, r, true);
}

inline void closing(uint8_t* m, int64_t h, int64_t w, int r) {
  morph(m, h, w, r, true);
  morph(m, h, w, r, false);
}

}  // namespace histogen
