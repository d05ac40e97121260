//! The safetensors reader (src/util/checkpoint.rs) from bytes.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(v) = mae::util::checkpoint::load_from_bytes(data) {
        let _ = mae::util::checkpoint::state_dict_from(v);
    }
});
