//! The Fashion-MNIST IDX reader (src/torchvision/datasets.rs `parse_idx`).
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = mae::torchvision::datasets::parse_idx(data);
});
