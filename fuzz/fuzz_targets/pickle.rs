//! The pickle machine (src/torch/serialization/pickle.rs) on raw bytes, persistent ids answered with a tensor
//! as the .pth reader does: any input is a value or an error, never a panic or a hang.
#![no_main]
use libfuzzer_sys::fuzz_target;
use mae::torch::serialization::pickle::{unpickle, Value};

fuzz_target!(|data: &[u8]| {
    let mut persistent_load = |_pid: Value| Ok(Value::Tensor(tch::Tensor::zeros([2], tch::kind::FLOAT_CPU)));
    let _ = unpickle(data, &mut persistent_load);
});
