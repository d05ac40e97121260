//! Port of timm/models/layers/weight_init.py `trunc_normal_`, plus torch.nn.init `xavier_uniform_`.

use tch::Tensor;

/// `trunc_normal_(tensor, mean=0., std, a=-2., b=2.)`: a normal truncated to the absolute
/// interval [a, b] by inverse-CDF sampling, exactly as timm (and torch.nn.init) do it.
pub fn trunc_normal_(t: &mut Tensor, std: f64) {
    let (mean, a, b) = (0., -2., 2.);
    // Computes standard normal cumulative distribution function
    let norm_cdf = |x: f64| {
        (1. + Tensor::from(x / std::f64::consts::SQRT_2)
            .erf()
            .double_value(&[]))
            / 2.
    };
    let l = norm_cdf((a - mean) / std);
    let u = norm_cdf((b - mean) / std);
    tch::no_grad(|| {
        if l == 0. && u == 1. {
            // [a, b] lies beyond ±8.3 std, so the inverse CDF below is erfinv of uniform(-1, 1):
            // a plain normal. Sample it directly (erfinv is far slower on CPU).
            let _ = t.normal_(mean, std);
            let _ = t.clamp_(a, b);
            return;
        }
        let _ = t.uniform_(2. * l - 1., 2. * u - 1.);
        let _ = t.erfinv_();
        let _ = t.g_mul_scalar_(std * std::f64::consts::SQRT_2);
        let _ = t.g_add_scalar_(mean);
        let _ = t.clamp_(a, b);
    });
}

/// `torch.nn.init.xavier_uniform_(w)` with gain 1 on a Linear weight [fan_out, fan_in, ...]
/// (trailing dims count as receptive field, as in PyTorch's `_calculate_fan_in_and_fan_out`).
pub fn xavier_uniform_(w: &mut Tensor) {
    let size = w.size();
    let receptive: i64 = size[2..].iter().product();
    let (fan_out, fan_in) = (size[0] * receptive, size[1] * receptive);
    let bound = (6. / (fan_in + fan_out) as f64).sqrt();
    tch::no_grad(|| {
        let _ = w.uniform_(-bound, bound);
    });
}
