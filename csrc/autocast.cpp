// libtorch's autocast state (ATen/autocast_mode.h) for src/torch/amp.rs: what torch.autocast's
// __enter__/__exit__ call through torch._C, for any device type and dtype. tch 0.24 only wraps
// the CUDA enabled flag. Device types and dtypes travel as c10's enum values (DeviceType::CPU = 0,
// CUDA = 1; ScalarType::Half = 5, Float = 6, BFloat16 = 15). No C++ exception may cross into
// Rust: each call returns -1 when libtorch throws (e.g. a device type autocast does not know).
#include <ATen/ATen.h>
#include <ATen/autocast_mode.h>

namespace {
at::DeviceType device_type(int d) { return static_cast<at::DeviceType>(d); }
}  // namespace

extern "C" {

int mae_autocast_is_enabled(int device) {
  try {
    return at::autocast::is_autocast_enabled(device_type(device)) ? 1 : 0;
  } catch (...) {
    return -1;
  }
}

int mae_autocast_set_enabled(int device, int enabled) {
  try {
    at::autocast::set_autocast_enabled(device_type(device), enabled != 0);
    return 0;
  } catch (...) {
    return -1;
  }
}

int mae_autocast_get_dtype(int device) {
  try {
    return static_cast<int>(at::autocast::get_autocast_dtype(device_type(device)));
  } catch (...) {
    return -1;
  }
}

int mae_autocast_set_dtype(int device, int dtype) {
  try {
    at::autocast::set_autocast_dtype(device_type(device), static_cast<at::ScalarType>(dtype));
    return 0;
  } catch (...) {
    return -1;
  }
}

int mae_autocast_increment_nesting() { return at::autocast::increment_nesting(); }

int mae_autocast_decrement_nesting() { return at::autocast::decrement_nesting(); }

int mae_autocast_clear_cache() {
  try {
    at::autocast::clear_cache();
    return 0;
  } catch (...) {
    return -1;
  }
}

}  // extern "C"
