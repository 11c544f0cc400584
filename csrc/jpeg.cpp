// One call per batch of patches from a JPEG-tiled TIFF (engine.jpeg_tiles): decode the tiles the batch
// needs and copy them into the patches, with the GIL released, on `threads` threads.
//
// libjpeg-turbo is not linked: it is loaded at run time (`jpeg_load`) from the shared library that
// imagecodecs' wheel installs (libjpeg-turbo 3 with the jpeg8 ABI), so no system package is needed.
// The struct layouts come from a libjpeg-turbo jpeglib.h found at build time (setup.py); the jpeg8 ABI
// is selected here, and jpeg_CreateDecompress checks the struct size against the library's own.
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <stdexcept>
#include <string>
#include <utility>
#include <vector>

#include "native.hpp"

#ifdef HISTOGEN_JPEG
#include <dlfcn.h>

#include <csetjmp>
#include <cstddef>
#include <cstdio>
// Our own configuration instead of the header folder's jconfig.h: the jpeg8 ABI of the library we load.
#define JCONFIG_INCLUDED
#define JPEG_LIB_VERSION 80
#define BITS_IN_JSAMPLE 8
#define MEM_SRCDST_SUPPORTED 1
#include <jpeglib.h>
#endif

namespace py = pybind11;

namespace histogen {
namespace {

struct Tile {             // one source tile of the batch
  uint8_t* pixels;        // (th, tw, 3) decoded, or the buffer to decode into
  const uint8_t* data;    // compressed bytes; null when `pixels` already holds the tile
  size_t size;
  std::string error;      // why it did not decode ("" = fine)
};

#ifdef HISTOGEN_JPEG

struct Api {
  jpeg_error_mgr* (*std_error)(jpeg_error_mgr*) = nullptr;
  void (*create)(j_decompress_ptr, int, size_t) = nullptr;
  void (*mem_src)(j_decompress_ptr, const unsigned char*, unsigned long) = nullptr;
  int (*read_header)(j_decompress_ptr, boolean) = nullptr;
  boolean (*start)(j_decompress_ptr) = nullptr;
  JDIMENSION (*read_scanlines)(j_decompress_ptr, JSAMPARRAY, JDIMENSION) = nullptr;
  boolean (*finish)(j_decompress_ptr) = nullptr;
  void (*destroy)(j_decompress_ptr) = nullptr;
};
Api api;
bool loaded = false;

struct ErrorMgr {
  jpeg_error_mgr pub;
  jmp_buf jump;
  char message[JMSG_LENGTH_MAX];
};

void on_error(j_common_ptr c) {
  auto* e = reinterpret_cast<ErrorMgr*>(c->err);
  (*c->err->format_message)(c, e->message);
  longjmp(e->jump, 1);
}

void on_message(j_common_ptr, int) {}  // warnings (a short tile, say) pass silently, as in imagecodecs

// Decodes one abbreviated TIFF tile (its tables apart, in `tables`) into `tile.pixels` (th, tw, 3) at
// 1/scale; pixels the JPEG does not cover stay white. No C++ object with a destructor lives between
// setjmp and the longjmp of an error.
void decode(Tile& tile, const uint8_t* tables, size_t ntables, int colorspace, int scale, int tw, int th) {
  jpeg_decompress_struct cinfo;
  ErrorMgr err;
  cinfo.err = api.std_error(&err.pub);
  err.pub.error_exit = on_error;
  err.pub.emit_message = on_message;
  if (setjmp(err.jump)) {
    api.destroy(&cinfo);
    tile.error = err.message;
    return;
  }
  api.create(&cinfo, JPEG_LIB_VERSION, sizeof(cinfo));
  if (ntables) {
    api.mem_src(&cinfo, tables, static_cast<unsigned long>(ntables));
    api.read_header(&cinfo, FALSE);  // tables only: they stay in cinfo for the image
  }
  api.mem_src(&cinfo, tile.data, static_cast<unsigned long>(tile.size));
  api.read_header(&cinfo, TRUE);
  if (colorspace >= 0) cinfo.jpeg_color_space = static_cast<J_COLOR_SPACE>(colorspace);
  cinfo.out_color_space = JCS_RGB;
  cinfo.scale_num = 1;
  cinfo.scale_denom = static_cast<unsigned int>(scale);
  api.start(&cinfo);
  const int ow = static_cast<int>(cinfo.output_width), oh = static_cast<int>(cinfo.output_height);
  if (cinfo.output_components != 3 || ow > tw || oh > th) {
    api.destroy(&cinfo);
    tile.error = "decodes to " + std::to_string(ow) + "x" + std::to_string(oh) + "x" +
                 std::to_string(cinfo.output_components) + ", not within the tile's " + std::to_string(tw) + "x" +
                 std::to_string(th) + "x3";
    return;
  }
  const size_t row = static_cast<size_t>(tw) * 3;
  if (ow < tw || oh < th) std::memset(tile.pixels, 255, row * th);
  JSAMPROW rows[16];
  while (static_cast<int>(cinfo.output_scanline) < oh) {
    const int y = static_cast<int>(cinfo.output_scanline), n = std::min(16, oh - y);
    for (int i = 0; i < n; ++i) rows[i] = tile.pixels + (y + i) * row;
    api.read_scanlines(&cinfo, rows, static_cast<JDIMENSION>(n));
  }
  api.finish(&cinfo);
  api.destroy(&cinfo);
}

template <typename F>
void symbol(void* lib, const char* name, F& f) {
  f = reinterpret_cast<F>(dlsym(lib, name));
  if (!f) throw std::runtime_error(std::string("no symbol ") + name + " in the library");
}

// Loads the library at `path` once; returns what it says its version is. Throws where it is not a
// jpeg8-ABI libjpeg whose struct layout matches the header this was built with.
std::string load(const std::string& path) {
  if (!loaded) {
    void* lib = dlopen(path.c_str(), RTLD_NOW | RTLD_LOCAL);
    if (!lib) throw std::runtime_error(std::string("cannot load it: ") + dlerror());
    Api a;
    symbol(lib, "jpeg_std_error", a.std_error);
    symbol(lib, "jpeg_CreateDecompress", a.create);
    symbol(lib, "jpeg_mem_src", a.mem_src);
    symbol(lib, "jpeg_read_header", a.read_header);
    symbol(lib, "jpeg_start_decompress", a.start);
    symbol(lib, "jpeg_read_scanlines", a.read_scanlines);
    symbol(lib, "jpeg_finish_decompress", a.finish);
    symbol(lib, "jpeg_destroy_decompress", a.destroy);
    // The library refuses a struct of another size or an ABI version it was not built for.
    jpeg_decompress_struct cinfo;
    ErrorMgr err;
    cinfo.err = a.std_error(&err.pub);
    err.pub.error_exit = on_error;
    if (setjmp(err.jump)) throw std::runtime_error(std::string("not the jpeg8 ABI this was built for: ") + err.message);
    a.create(&cinfo, JPEG_LIB_VERSION, sizeof(cinfo));
    a.destroy(&cinfo);
    api = a;
    loaded = true;
  }
  return "jpeg" + std::to_string(JPEG_LIB_VERSION);
}

#else

void decode(Tile& tile, const uint8_t*, size_t, int, int, int, int) { tile.error = "built without jpeglib.h"; }
bool loaded = false;
std::string load(const std::string&) {
  throw std::runtime_error("engine._native was built without libjpeg headers (jpeglib.h not found by setup.py)");
}

#endif

const uint8_t* bytes_of(const py::handle& b, size_t& n) {
  char* p = nullptr;
  Py_ssize_t len = 0;
  if (PyBytes_AsStringAndSize(b.ptr(), &p, &len) != 0) throw py::error_already_set();
  n = static_cast<size_t>(len);
  return reinterpret_cast<const uint8_t*>(p);
}

// Decodes the tiles of `data` that are not None into the matching arrays of `tiles`, then copies
// each region (top-left `regions[k]`, at the level as decoded) from the tiles into out[k]. Tile i
// is tile number index[i] of a grid `across` tiles wide of (tw, th) pixels; pixels beyond
// (level_w, level_h) are white. Returns (i, message) for each tile that failed; the regions are
// then incomplete and the caller must not use them.
std::vector<std::pair<int64_t, std::string>> decode_assemble(
    py::list tiles, py::list data, py::object tables, int colorspace, int scale,
    py::array_t<int64_t, py::array::c_style> index, int64_t across,
    py::array_t<int64_t, py::array::c_style> regions, int64_t level_w, int64_t level_h,
    py::array_t<uint8_t, py::array::c_style> out, int threads) {
  const int64_t n = static_cast<int64_t>(tiles.size());
  if (static_cast<int64_t>(data.size()) != n || index.ndim() != 1 || index.shape(0) != n)
    throw std::invalid_argument("tiles, data and index must have one entry per tile");
  if (regions.ndim() != 2 || regions.shape(1) != 2 || out.ndim() != 4 || out.shape(3) != 3 ||
      out.shape(0) != regions.shape(0))
    throw std::invalid_argument("regions must be (m, 2) and out (m, h, w, 3)");
  int tw = 0, th = 0;
  std::vector<Tile> work(n);
  bool decoding = false;
  for (int64_t i = 0; i < n; ++i) {
    auto a = py::cast<py::array_t<uint8_t, py::array::c_style>>(tiles[i]);
    if (a.ndim() != 3 || a.shape(2) != 3) throw std::invalid_argument("each tile must be (th, tw, 3) uint8");
    if (i == 0) tw = static_cast<int>(a.shape(1)), th = static_cast<int>(a.shape(0));
    if (a.shape(1) != tw || a.shape(0) != th) throw std::invalid_argument("tiles differ in size");
    work[i].pixels = a.mutable_data();
    if (!data[i].is_none()) {
      work[i].data = bytes_of(data[i], work[i].size);
      decoding = true;
    }
  }
  if (decoding && !loaded) throw std::runtime_error("libjpeg is not loaded (call jpeg_load first)");
  size_t ntables = 0;
  const uint8_t* tab = tables.is_none() ? nullptr : bytes_of(tables, ntables);
  const int64_t m = regions.shape(0), h = out.shape(1), w = out.shape(2);
  const int64_t* idx = index.data();
  const int64_t* reg = regions.data();
  uint8_t* dst = out.mutable_data();
  {
    py::gil_scoped_release release;
#pragma omp parallel num_threads(std::max(1, threads))
    {
#pragma omp for schedule(dynamic, 1)
      for (int64_t i = 0; i < n; ++i)
        if (work[i].data) decode(work[i], tab, ntables, colorspace, scale, tw, th);
#pragma omp for schedule(dynamic, 1)
      for (int64_t k = 0; k < m; ++k) {
        const int64_t x = reg[2 * k], y = reg[2 * k + 1];
        uint8_t* patch = dst + k * h * w * 3;
        if (x < 0 || y < 0 || x + w > level_w || y + h > level_h) std::memset(patch, 255, h * w * 3);
        if (n == 0) continue;  // wholly outside the level: no tile
        const int64_t c0 = std::max<int64_t>(0, x / tw), c1 = std::min((level_w + tw - 1) / tw, (x + w + tw - 1) / tw);
        const int64_t r0 = std::max<int64_t>(0, y / th), r1 = std::min((level_h + th - 1) / th, (y + h + th - 1) / th);
        for (int64_t r = r0; r < r1; ++r)
          for (int64_t c = c0; c < c1; ++c) {
            const int64_t* hit = std::lower_bound(idx, idx + n, r * across + c);
            if (hit == idx + n || *hit != r * across + c) continue;  // the caller passes every tile; guarded anyway
            const Tile& t = work[hit - idx];
            const int64_t tx = c * tw, ty = r * th;
            const int64_t ax0 = std::max(x, tx), ay0 = std::max(y, ty);
            const int64_t ax1 = std::min({x + w, tx + tw, level_w}), ay1 = std::min({y + h, ty + th, level_h});
            if (ax1 <= ax0 || ay1 <= ay0) continue;  // the tile's padding beyond the level edge
            for (int64_t yy = ay0; yy < ay1; ++yy)
              std::memcpy(patch + ((yy - y) * w + (ax0 - x)) * 3, t.pixels + ((yy - ty) * tw + (ax0 - tx)) * 3,
                          (ax1 - ax0) * 3);
          }
      }
    }
  }
  std::vector<std::pair<int64_t, std::string>> failed;
  for (int64_t i = 0; i < n; ++i)
    if (!work[i].error.empty()) failed.emplace_back(i, work[i].error);
  return failed;
}

}  // namespace

void register_jpeg(py::module_& m) {
  m.def("jpeg_load", &load, py::arg("path"),
        "Load libjpeg-turbo (jpeg8 ABI) from `path` for jpeg_decode_assemble; returns the ABI name.");
  m.def("jpeg_decode_assemble", &decode_assemble, py::arg("tiles"), py::arg("data"), py::arg("tables"),
        py::arg("colorspace"), py::arg("scale"), py::arg("index"), py::arg("across"), py::arg("regions"),
        py::arg("level_w"), py::arg("level_h"), py::arg("out"), py::arg("threads") = 1,
        "Decode the JPEG tiles whose data is given into their arrays, then copy every region from the tiles.");
}

}  // namespace histogen
