// Per-pixel tissue rule shared by the mask (thumbnail) and check (patch) kernels.
#pragma once

#include <algorithm>
#include <cstdint>

namespace histogen {

// Classes in the order the rule tests them; only kCandidate can be tissue.
enum PixelClass : uint8_t { kWhite = 0, kDark = 1, kPen = 2, kCandidate = 3 };

struct PixelRule {
  int white;       // min channel >= white -> background
  int dark;        // max channel < dark -> black background / black ink
  int pen_margin;  // channel dominance that marks green/cyan/blue ink
};

// Integer HSV-style saturation in 0..255.
inline int saturation(int r, int g, int b) {
  const int mx = std::max(r, std::max(g, b));
  const int mn = std::min(r, std::min(g, b));
  return mx == 0 ? 0 : (255 * (mx - mn)) / mx;
}

inline PixelClass classify(int r, int g, int b, const PixelRule& p) {
  const int mx = std::max(r, std::max(g, b));
  const int mn = std::min(r, std::min(g, b));
  if (mn >= p.white) return kWhite;
  if (mx < p.dark) return kDark;
  // In H&E red always dominates green, so green above red is ink; blue ink
  // has r close to g, while haematoxylin purple has r clearly above g.
  const int m = p.pen_margin;
  if (g >= r + m) return kPen;
  if (b >= r + m && b >= g + m && r <= g + m / 2) return kPen;
  return kCandidate;
}

inline bool is_tissue(int r, int g, int b, const PixelRule& p, int threshold) {
  return classify(r, g, b, p) == kCandidate && saturation(r, g, b) >= threshold;
}

}  // namespace histogen
