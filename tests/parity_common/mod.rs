//! Shared by the parity tests: fixtures from tools/make_parity_fixtures.py, checkpoint loading,
//! relative errors.
#![allow(dead_code)]

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Mutex;

use tch::{Kind, Tensor};

/// Generates (once; the script skips groups whose stamp matches its hash) and returns the fixture
/// directory, or None when the Python reference env is missing outside CI (loudly). With
/// CI=true a missing env fails the test.
pub fn fixtures(group: &str) -> Option<PathBuf> {
    static GEN: Mutex<()> = Mutex::new(());
    let _guard = GEN.lock().unwrap_or_else(|e| e.into_inner());
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let dir = root.join("target/fixtures/parity");
    let python = root.join(".venv/bin/python");
    if !python.exists() {
        let msg = format!("{} missing: run tools/setup.sh to build the reference env", python.display());
        if std::env::var("CI").is_ok_and(|v| v == "true") {
            panic!("CI=true and {msg}");
        }
        if dir.join(format!("{group}.stamp")).exists() {
            eprintln!("WARNING: {msg}; using existing fixtures for {group}");
            return Some(dir);
        }
        eprintln!("SKIPPED (parity group {group}): {msg}");
        return None;
    }
    let status = Command::new(&python)
        .arg(root.join("tools/make_parity_fixtures.py"))
        .arg(&dir)
        .arg(group)
        .status()
        .expect("running tools/make_parity_fixtures.py");
    assert!(status.success(), "tools/make_parity_fixtures.py {group} failed");
    Some(dir)
}

/// Big models run one at a time: memory (ViT-H is 2.5 GB per copy) and 2 cores.
pub fn big_model_lock() -> std::sync::MutexGuard<'static, ()> {
    static BIG: Mutex<()> = Mutex::new(());
    BIG.lock().unwrap_or_else(|e| e.into_inner())
}

/// The state dict of a fixture checkpoint `NAME.pth` (torch.save({'model': sd})).
pub fn load_checkpoint(dir: &Path, name: &str) -> Vec<(String, Tensor)> {
    let path = dir.join(format!("{name}.safetensors"));
    Tensor::read_safetensors(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

pub fn load_io(dir: &Path, name: &str) -> HashMap<String, Tensor> {
    let path = dir.join(format!("{name}.safetensors"));
    Tensor::read_safetensors(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display())).into_iter().collect()
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
