//! Mixed precision through libtorch's own autocast (ATen/autocast_mode.h, reached through
//! csrc/autocast.cpp). The official scripts use `torch.cuda.amp.autocast()` (float16 on CUDA,
//! nothing on the CPU); `autocast(device, precision)` is `with torch.autocast(device.type,
//! dtype)` for any device and dtype: libtorch's op lists decide, per device, which ops run in
//! the low precision (matmul, linear, convolutions, attention), which in float32 (e.g. losses on
//! CUDA), and the rest follow their inputs.

use std::marker::PhantomData;
use std::os::raw::c_int;

use anyhow::{bail, Result};
use tch::{Device, Kind, Tensor};

use crate::torch::optim::c_tensor;

extern "C" {
    fn mae_autocast_is_enabled(device: c_int) -> c_int;
    fn mae_autocast_set_enabled(device: c_int, enabled: c_int) -> c_int;
    fn mae_autocast_get_dtype(device: c_int) -> c_int;
    fn mae_autocast_set_dtype(device: c_int, dtype: c_int) -> c_int;
    fn mae_autocast_increment_nesting() -> c_int;
    fn mae_autocast_decrement_nesting() -> c_int;
    fn mae_autocast_clear_cache() -> c_int;
    fn mae_amp_unscale(
        grads: *const *mut std::ffi::c_void,
        n: c_int,
        found_inf: *mut std::ffi::c_void,
        inv_scale: *mut std::ffi::c_void,
    ) -> c_int;
}

/// `--precision`: the dtype of the autocast region (fp32: autocast off).
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Precision {
    Fp32,
    Bf16,
    Fp16,
}

impl Precision {
    /// The precision to run on `device`: the flag when given, else float32 on the CPU (the
    /// official CPU path has no autocast) and float16 on CUDA (the official `torch.cuda.amp`).
    pub fn for_device(flag: Option<Precision>, device: Device) -> Result<Precision> {
        match (flag, device) {
            (Some(Precision::Fp16), Device::Cpu) => bail!(
                "--precision fp16 needs a CUDA device (fp16 autocast is the official CUDA path); \
                 use --precision bf16 on the CPU"
            ),
            (Some(Precision::Bf16), Device::Cpu) => {
                static WARN: std::sync::Once = std::sync::Once::new();
                if cpu_bf16_hardware() == Some(false) {
                    WARN.call_once(|| {
                        eprintln!(
                            "warning: --precision bf16 on a CPU without bf16 hardware (neither \
                             avx512_bf16 nor amx_bf16 in /proc/cpuinfo): bf16 runs emulated here, \
                             about 3.6x slower than fp32 (in PyTorch too); use --precision fp32"
                        )
                    });
                }
                Ok(Precision::Bf16)
            }
            (Some(p), _) => Ok(p),
            (None, Device::Cuda(_)) => Ok(Precision::Fp16),
            (None, _) => Ok(Precision::Fp32),
        }
    }

    pub fn kind(self) -> Kind {
        match self {
            Precision::Fp32 => Kind::Float,
            Precision::Bf16 => Kind::BFloat16,
            Precision::Fp16 => Kind::Half,
        }
    }
}

/// Does this CPU have bf16 arithmetic (AVX512-BF16 or AMX-BF16)? `None` where /proc/cpuinfo (or
/// the file named by `MAE_CPUINFO`, which the tests use) cannot be read.
pub fn cpu_bf16_hardware() -> Option<bool> {
    let path = std::env::var_os("MAE_CPUINFO").unwrap_or_else(|| "/proc/cpuinfo".into());
    std::fs::read_to_string(path)
        .ok()
        .map(|text| cpuinfo_has_bf16(&text))
}

/// The `flags` lines of a /proc/cpuinfo text name `avx512_bf16` or `amx_bf16`.
pub fn cpuinfo_has_bf16(cpuinfo: &str) -> bool {
    cpuinfo
        .lines()
        .filter(|l| l.starts_with("flags"))
        .flat_map(|l| l.split_whitespace())
        .any(|f| f == "avx512_bf16" || f == "amx_bf16")
}

// c10::DeviceType and c10::ScalarType values (c10/core/DeviceType.h, ScalarType.h).
fn device_type(device: Device) -> c_int {
    match device {
        Device::Cpu => 0,
        Device::Cuda(_) => 1,
        Device::Vulkan => 10,
        Device::Mps => 13,
    }
}

fn scalar_type(kind: Kind) -> c_int {
    match kind {
        Kind::Half => 5,
        Kind::Float => 6,
        Kind::BFloat16 => 15,
        k => panic!("autocast dtype {k:?}: expected Half, Float or BFloat16"),
    }
}

fn kind(scalar_type: c_int) -> Kind {
    match scalar_type {
        5 => Kind::Half,
        6 => Kind::Float,
        15 => Kind::BFloat16,
        s => panic!("autocast dtype: unexpected c10::ScalarType {s}"),
    }
}

fn ok(rc: c_int, what: &str, device: Device) -> c_int {
    assert!(rc >= 0, "libtorch rejected autocast {what} for {device:?}");
    rc
}

/// `torch.is_autocast_enabled(device.type)` in this thread.
pub fn is_enabled(device: Device) -> bool {
    let d = device_type(device);
    ok(unsafe { mae_autocast_is_enabled(d) }, "is_enabled", device) != 0
}

/// `torch.get_autocast_dtype(device.type)` in this thread.
pub fn dtype(device: Device) -> Kind {
    let d = device_type(device);
    kind(ok(
        unsafe { mae_autocast_get_dtype(d) },
        "get_dtype",
        device,
    ))
}

fn set(device: Device, enabled: bool, dtype: Kind) {
    let d = device_type(device);
    ok(
        unsafe { mae_autocast_set_enabled(d, enabled.into()) },
        "set_enabled",
        device,
    );
    ok(
        unsafe { mae_autocast_set_dtype(d, scalar_type(dtype)) },
        "set_dtype",
        device,
    );
}

/// An autocast region, closed when dropped. Autocast state is thread-local in libtorch, so the
/// guard is neither `Send` nor `Sync`: run the forward in the thread that holds it.
#[must_use = "autocast ends when the guard is dropped"]
pub struct Autocast {
    device: Device,
    prev_enabled: bool,
    prev_dtype: Kind,
    _thread_local: PhantomData<*const ()>,
}

/// `with torch.autocast(device.type, dtype=precision.kind(), enabled=precision != fp32)`:
/// fp32 turns autocast off inside (as `enabled=False` does), bf16/fp16 turn it on with that
/// dtype. The previous state comes back on drop. fp16 on the CPU is refused by
/// `Precision::for_device`, which the command-line paths go through.
pub fn autocast(device: Device, precision: Precision) -> Autocast {
    let guard = Autocast {
        device,
        prev_enabled: is_enabled(device),
        prev_dtype: dtype(device),
        _thread_local: PhantomData,
    };
    match precision {
        Precision::Fp32 => set(device, false, guard.prev_dtype),
        p => set(device, true, p.kind()),
    }
    unsafe { mae_autocast_increment_nesting() };
    guard
}

impl Drop for Autocast {
    /// torch.autocast's `__exit__`: the cast-weight cache is dropped when the outermost region
    /// closes, then the previous state is restored.
    fn drop(&mut self) {
        if unsafe { mae_autocast_decrement_nesting() } == 0 {
            unsafe { mae_autocast_clear_cache() };
        }
        set(self.device, self.prev_enabled, self.prev_dtype);
    }
}

/// `torch._amp_foreach_non_finite_check_and_unscale_(grads, found_inf, inv_scale)` (csrc/optim.cpp):
/// every tensor of `grads` (one device and dtype) times `inv_scale`, and `found_inf` set to 1 if
/// any holds an inf or a NaN; `found_inf` and `inv_scale` are one-element float32 tensors on the
/// same device. Nothing is read back to the host.
pub fn foreach_non_finite_check_and_unscale_(
    grads: &[&Tensor],
    found_inf: &Tensor,
    inv_scale: &Tensor,
) {
    let ptrs: Vec<_> = grads.iter().map(|t| c_tensor(t)).collect();
    let rc = unsafe {
        mae_amp_unscale(
            ptrs.as_ptr(),
            ptrs.len() as c_int,
            c_tensor(found_inf),
            c_tensor(inv_scale),
        )
    };
    assert_eq!(rc, 0, "libtorch failed to unscale {} gradients", ptrs.len());
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_precision_per_device() {
        assert_eq!(
            Precision::for_device(None, Device::Cpu).unwrap(),
            Precision::Fp32
        );
        assert_eq!(
            Precision::for_device(None, Device::Cuda(0)).unwrap(),
            Precision::Fp16
        );
        assert_eq!(
            Precision::for_device(Some(Precision::Bf16), Device::Cpu).unwrap(),
            Precision::Bf16
        );
        let e = Precision::for_device(Some(Precision::Fp16), Device::Cpu).unwrap_err();
        assert!(e.to_string().contains("--precision bf16"), "{e}");
    }

    #[test]
    fn bf16_hardware_from_cpuinfo_flags() {
        let epyc = "processor\t: 0\nflags\t\t: fpu sse avx2 avx512f avx512_vnni\n";
        let xeon = "processor\t: 0\nflags\t\t: fpu avx512f avx512_bf16 amx_tile\n";
        let amx = "flags\t\t: fpu amx_bf16 amx_tile\n";
        assert!(!cpuinfo_has_bf16(epyc));
        assert!(cpuinfo_has_bf16(xeon));
        assert!(cpuinfo_has_bf16(amx));
        // a flag that only contains the name does not count
        assert!(!cpuinfo_has_bf16("flags\t: avx512_bf16x amx_bf16_extra\n"));
        assert!(!cpuinfo_has_bf16("model name\t: avx512_bf16\n"));
    }
}
