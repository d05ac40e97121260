// libtorch's autocast state (ATen/autocast_mode.h) for src/torch/amp.rs, and for the optimizers
// (src/torch/optim.rs) setting a gradient to None and AdamW's per-tensor update with the `value=`
// arguments tch lacks. Autocast: what torch.autocast's
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

// `optimizer.zero_grad()` of torch 2.x (set_to_none=True): drop each parameter's .grad instead
// of zeroing it (tch's zero_grad zeroes), so that the next backward writes the gradient into a
// fresh tensor rather than accumulating into a zeroed one. `t` is tch's C_tensor (an at::Tensor*).
int mae_set_grad_to_none(at::Tensor* t) {
  try {
    t->mutable_grad().reset();
    return 0;
  } catch (...) {
    return -1;
  }
}

// The tensor part of torch/optim/adam.py `_single_tensor_adam` (decoupled weight decay; no
// amsgrad, maximize, capturable or complex), the CPU default of torch.optim.AdamW: the same ATen
// calls with the same Python-float scalars. `addcmul_`/`addcdiv_` take `value=` here, so no
// scaled copy of the gradient or of exp_avg is made (tch's wrappers have no `value`).
int mae_adamw_update(at::Tensor* param, at::Tensor* grad, at::Tensor* exp_avg,
                     at::Tensor* exp_avg_sq, double lr, double weight_decay, double beta1,
                     double beta2, double eps, double step_size, double bias_correction2_sqrt) {
  try {
    if (weight_decay != 0) {
      param->mul_(1 - lr * weight_decay);
    }
    exp_avg->lerp_(*grad, 1 - beta1);
    exp_avg_sq->mul_(beta2).addcmul_(*grad, *grad, 1 - beta2);
    at::Tensor denom = (exp_avg_sq->sqrt() / bias_correction2_sqrt).add_(eps);
    param->addcdiv_(*exp_avg, denom, -step_size);
    return 0;
  } catch (...) {
    return -1;
  }
}

}  // extern "C"
