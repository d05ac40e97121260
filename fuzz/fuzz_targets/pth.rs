//! The whole `torch.save` path from bytes (src/util/checkpoint.rs): zip container, data.pkl,
//! storages, dtypes, strides, views; then the state dict as `mae` takes it.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(v) = mae::util::checkpoint::load_from_bytes(data) {
        let _ = mae::util::checkpoint::state_dict_from(v);
    }
});
