//! Shared by the parity tests: fixtures from tools/make_parity_fixtures.py, checkpoint loading,
//! relative errors.
#![allow(dead_code)]

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use tch::{Kind, Tensor};

#[path = "../common/mod.rs"]
pub mod common;

/// Generates (once; the script skips groups whose stamp matches its hash) and returns the fixture
/// directory. A missing Python reference env fails the test (common::python panics).
pub fn fixtures(group: &str) -> PathBuf {
    static GEN: Mutex<()> = Mutex::new(());
    let _guard = GEN.lock().unwrap_or_else(|e| e.into_inner());
    let dir = common::root().join("target/fixtures/parity");
    let script = common::root().join("tools/make_parity_fixtures.py");
    common::run_python(&script, &[dir.to_str().expect("utf-8 path"), group]);
    dir
}

/// Big models run one at a time: memory (ViT-H is 2.5 GB per copy) and 2 cores.
pub fn big_model_lock() -> std::sync::MutexGuard<'static, ()> {
    static BIG: Mutex<()> = Mutex::new(());
    BIG.lock().unwrap_or_else(|e| e.into_inner())
}

/// The state dict of a fixture checkpoint `NAME.pth` (torch.save({'model': sd})).
pub fn load_checkpoint(dir: &Path, name: &str) -> Vec<(String, Tensor)> {
    let path = dir.join(format!("{name}.pth"));
    mae::util::checkpoint::load_state_dict(&path).unwrap_or_else(|e| panic!("{e:#}"))
}

pub fn load_io(dir: &Path, name: &str) -> HashMap<String, Tensor> {
    let path = dir.join(format!("{name}.safetensors"));
    Tensor::read_safetensors(&path)
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
        .into_iter()
        .collect()
}

/// ‖a − b‖ / ‖b‖ in f64 (NaN when either holds a NaN).
pub fn rel_err(a: &Tensor, b: &Tensor) -> f64 {
    assert_eq!(a.size(), b.size(), "shape");
    let (a, b) = (a.to_kind(Kind::Double), b.to_kind(Kind::Double));
    let num = (&a - &b).norm().double_value(&[]);
    let den = b.norm().double_value(&[]);
    if a.isnan().any().int64_value(&[]) != 0 || b.isnan().any().int64_value(&[]) != 0 {
        return f64::NAN;
    }
    num / den
}

/// Asserts rel_err ≤ tol (NaN fails) and returns it.
pub fn check(what: &str, a: &Tensor, b: &Tensor, tol: f64) -> f64 {
    let e = rel_err(a, b);
    assert!(e <= tol, "{what}: relative error {e:e} > {tol:e}");
    e
}
