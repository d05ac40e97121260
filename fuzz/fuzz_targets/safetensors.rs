//! The safetensors reader (src/torch/serialization) from bytes.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(v) = mae::torch::serialization::load_from_bytes(data) {
        let _ = mae::torch::serialization::state_dict_from(v);
    }
});
