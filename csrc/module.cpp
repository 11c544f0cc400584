#include "native.hpp"

PYBIND11_MODULE(_native, m) {
  m.doc() = "histogen native kernels (tissue mask, tile planning, patch check, batch JPEG tile decode)";
  histogen::register_mask(m);
  histogen::register_plan(m);
  histogen::register_check(m);
  histogen::register_jpeg(m);
}
