//! The whole `torch.save` path from bytes (src/torch/serialization): zip container, data.pkl,
//! storages, dtypes, strides, views; then the state dict as `mae` takes it.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(v) = mae::torch::serialization::load_from_bytes(data) {
        let _ = mae::torch::serialization::state_dict_from(v);
    }
});
