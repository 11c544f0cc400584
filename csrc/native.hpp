// Each kernel file registers its functions on the one engine._native module.
#pragma once

#include <pybind11/pybind11.h>

namespace histogen {

void register_mask(pybind11::module_& m);
void register_plan(pybind11::module_& m);
void register_check(pybind11::module_& m);
void register_jpeg(pybind11::module_& m);

}  // namespace histogen
