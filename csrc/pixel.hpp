// Per-pixel rule shared by the mask (thumbnail) and check (patch) kernels.
#pragma once

#include <algorithm>
#include <cstdint>

namespace histogen {

// Classes in the order the rule tests them; only kCandidate can be tissue,
// kDark and kPen are ink.
enum PixelClass : uint8_t { kWhite = 0, kDark = 1, kPen = 2, kCandidate = 3 };

// Ink families, bit k = engine.ink.INK_FAMILIES[k]; a rule tests only the families it is given.
enum InkFamily : int { kInkGreen = 1, kInkBlack = 2, kInkRed = 4, kInkBlue = 8 };

struct PixelRule {
  int white;           // min channel >= white -> background
  int dark;            // max channel < dark -> black ink / black background
  const int32_t* od;   // 256-entry optical density table (engine.mask.OD_LUT)
  int inks;            // InkFamily bits the rule looks for
};

// Integer HSV-style saturation in 0..255.
inline int saturation(int r, int g, int b) {
  const int mx = std::max(r, std::max(g, b));
  const int mn = std::min(r, std::min(g, b));
  return mx == 0 ? 0 : (255 * (mx - mn)) / mx;
}

// Ink by where the optical density vector points (its chromaticity o/t) and how
// dense it is: H&E mixtures keep green absorption high, red absorption between
// eosin's and haematoxylin's and blue absorption moderate; inks leave that cone.
// Pale eosin and haematoxylin reach into the red and blue cones only below
// t ~ 1000, hence the density floors. Bounds in percent of t; see engine/ink.py.
inline bool is_ink_od(int32_t o_r, int32_t o_g, int32_t o_b, int inks) {
  const int32_t t = o_r + o_g + o_b;
  if (t < 600) return false;  // below every branch's floor
  const int32_t mx = std::max(o_r, std::max(o_g, o_b)), mn = std::min(o_r, std::min(o_g, o_b));
  if ((inks & kInkGreen) && 100 * o_g < 32 * t) return true;             // green / cyan: green passes
  if ((inks & kInkBlack) && 100 * (mx - mn) < 17 * t && t > 900) return true;  // black: dense and neutral
  if (inks & kInkRed) {
    if (100 * o_r < 15 * t && 100 * o_b > 27 * t && t >= 850) return true;  // red: blue absorbed like green
    if (100 * o_r < 19 * t && 100 * o_b > 24 * t && t >= 1100) return true;  // dense red, wider cone
    if (100 * o_r < 25 * t && 100 * o_b > 22 * t && t >= 1800) return true;  // very dense red, widest cone
  }
  if ((inks & kInkBlue) && 100 * o_r > 36 * t && 100 * o_b > 8 * t && 100 * o_b < 20 * t &&
      100 * o_g < 52 * t && t >= 700)
    return true;                                                        // blue: red absorbed above green
  return false;
}

// Red absorbed about as much as green: haematoxylin, or blue ink thinned over tissue. Not ink by
// itself; ink where it fills a whole square window (see engine.ink.is_bluish_reference).
inline bool is_bluish_od(int32_t o_r, int32_t o_g, int32_t o_b) {
  const int32_t t = o_r + o_g + o_b;
  return t >= 400 && 100 * o_r >= 33 * t && 100 * o_g <= 45 * t;
}

inline PixelClass classify(int r, int g, int b, const PixelRule& p) {
  const int mx = std::max(r, std::max(g, b));
  const int mn = std::min(r, std::min(g, b));
  if (mn >= p.white) return kWhite;
  if (mx < p.dark) return kDark;
  if (is_ink_od(p.od[r], p.od[g], p.od[b], p.inks)) return kPen;
  return kCandidate;
}

}  // namespace histogen
