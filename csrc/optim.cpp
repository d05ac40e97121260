// The tensor work of the optimizers (src/torch/optim.rs) and of the fp16 gradient scaler
// (src/util/misc.rs) that tch 0.24 has no binding for: torch 2.x's `zero_grad` (grad = None),
// AdamW's three implementations in torch/optim/adam.py (`_single_tensor_adam`,
// `_multi_tensor_adam` = foreach, `_fused_adam` = fused) for decoupled weight decay without
// amsgrad, maximize, capturable or complex, and GradScaler.unscale_'s one-kernel inf/NaN check.
// Tensors arrive as tch's C_tensor pointers (at::Tensor*), lists as an array of them and a length.
// No C++ exception may cross into Rust: each call returns -1 when libtorch throws.
#include <ATen/ATen.h>

#include <cmath>
#include <vector>

namespace {
std::vector<at::Tensor> list(at::Tensor** ts, int n) {
  std::vector<at::Tensor> v;
  v.reserve(n);
  for (int i = 0; i < n; ++i) v.push_back(*ts[i]);
  return v;
}
}  // namespace

extern "C" {

// `optimizer.zero_grad()` of torch 2.x (set_to_none=True): drop each parameter's .grad instead
// of zeroing it (tch's zero_grad zeroes), so that the next backward writes the gradient into a
// fresh tensor rather than accumulating into a zeroed one.
int mae_set_grad_to_none(at::Tensor* t) {
  try {
    t->mutable_grad().reset();
    return 0;
  } catch (...) {
    return -1;
  }
}

// `_single_tensor_adam`'s update of one parameter, the CPU default of torch.optim.AdamW: the
// same ATen calls with the same Python-float scalars. `addcmul_`/`addcdiv_` take `value=` here,
// so no scaled copy of the gradient or of exp_avg is made (tch's wrappers have no `value`).
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

// One parameter group's tensors of one device and dtype, updated by `_multi_tensor_adam`
// (foreach=True, torch.optim.AdamW's default on CUDA: one multi-tensor kernel per operation
// instead of one kernel per parameter) or, with `fused`, by `_fused_adam` (fused=True: the steps
// incremented, then one `_fused_adamw_` kernel for parameters and moments; unscaling and skipping
// on inf/NaN are done before, by the scaler). Foreach keeps the steps on the CPU (float32, as
// torch does when neither capturable nor fused) and computes the bias corrections on the host
// from them, as torch does; fused keeps them on the parameters' device.
int mae_adamw_multi_tensor(at::Tensor** params, at::Tensor** grads, at::Tensor** exp_avgs,
                           at::Tensor** exp_avg_sqs, at::Tensor** steps, int n, double lr,
                           double weight_decay, double beta1, double beta2, double eps,
                           int fused) {
  try {
    if (n == 0) return 0;
    auto p = list(params, n), g = list(grads, n), m = list(exp_avgs, n),
         v = list(exp_avg_sqs, n), s = list(steps, n);
    if (fused) {
      at::_foreach_add_(s, 1);
      at::_fused_adamw_(p, g, m, v, {}, s, lr, beta1, beta2, weight_decay, eps,
                        /*amsgrad=*/false, /*maximize=*/false);
      return 0;
    }
    if (s[0].is_cpu()) {
      at::_foreach_add_(s, at::scalar_tensor(1.0, at::kFloat), 1.0);
    } else {
      at::_foreach_add_(s, 1);
    }
    if (weight_decay != 0) {
      at::_foreach_mul_(p, 1 - lr * weight_decay);
    }
    at::_foreach_lerp_(m, g, 1 - beta1);
    at::_foreach_mul_(v, beta2);
    at::_foreach_addcmul_(v, g, g, 1 - beta2);
    std::vector<at::Scalar> step_size, bias_correction2_sqrt;
    step_size.reserve(n);
    bias_correction2_sqrt.reserve(n);
    for (const auto& st : s) {
      double step = st.item<double>();
      double bias_correction1 = 1 - std::pow(beta1, step);
      double bias_correction2 = 1 - std::pow(beta2, step);
      step_size.emplace_back((lr / bias_correction1) * -1);
      bias_correction2_sqrt.emplace_back(std::pow(bias_correction2, 0.5));
    }
    auto denom = at::_foreach_sqrt(v);
    at::_foreach_div_(denom, bias_correction2_sqrt);
    at::_foreach_add_(denom, eps);
    at::_foreach_addcdiv_(p, m, denom, step_size);
    return 0;
  } catch (...) {
    return -1;
  }
}

// GradScaler.unscale_ for the gradients of one device and dtype:
// `torch._amp_foreach_non_finite_check_and_unscale_(grads, found_inf, inv_scale)` multiplies
// every gradient by inv_scale and sets found_inf (float32, one element, same device) to 1 when
// any of them holds an inf or a NaN, without reading anything back to the host.
int mae_amp_unscale(at::Tensor** grads, int n, at::Tensor* found_inf, at::Tensor* inv_scale) {
  try {
    if (n == 0) return 0;
    at::_amp_foreach_non_finite_check_and_unscale_(list(grads, n), *found_inf, *inv_scale);
    return 0;
  } catch (...) {
    return -1;
  }
}

}  // extern "C"
