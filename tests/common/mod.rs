//! Shared by the integration tests: the pinned Python reference environment made by
//! tools/setup.sh. Tests that need it fail (never skip) when it is missing.
#![allow(dead_code)]
use std::path::{Path, PathBuf};
use std::process::Command;

pub fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// `.venv/bin/python`, or a panic saying how to create it.
pub fn python() -> PathBuf {
    let py = root().join(".venv/bin/python");
    assert!(
        py.exists(),
        "{} is missing: run tools/setup.sh (the README test command does) to install the pinned references",
        py.display()
    );
    py
}

/// Run `python script args…` from the repository root; panic with its stderr if it fails.
pub fn run_python(script: &Path, args: &[&str]) -> String {
    let out = Command::new(python())
        .arg(script)
        .args(args)
        .current_dir(root())
        .output()
        .unwrap_or_else(|e| panic!("running {}: {e}", script.display()));
    assert!(
        out.status.success(),
        "{} {:?} failed:\n{}",
        script.display(),
        args,
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Run an inline Python program (`python -c`), returning stdout.
pub fn run_python_code(code: &str, args: &[&str]) -> String {
    let out = Command::new(python())
        .arg("-c")
        .arg(code)
        .args(args)
        .current_dir(root())
        .output()
        .unwrap_or_else(|e| panic!("running python -c: {e}"));
    assert!(
        out.status.success(),
        "python -c failed:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// A scratch directory under target/ for fixtures of one test binary.
pub fn scratch(name: &str) -> PathBuf {
    let dir = root().join("target/test-scratch").join(name);
    std::fs::create_dir_all(&dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display()));
    dir
}

/// The `mae eval` fixture (tools/make_eval_fixture.py, written once: the script keeps a stamp):
/// the photo folder and its vit_base_patch16 checkpoint. The script runs once per test binary:
/// tests run in parallel, and a second run on a fresh tree would delete the folder another test
/// is reading.
pub fn eval_fixture() -> (PathBuf, PathBuf) {
    static FIXTURE: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();
    let dir = FIXTURE
        .get_or_init(|| {
            let dir = root().join("target/fixtures/eval");
            run_python(
                &root().join("tools/make_eval_fixture.py"),
                &[dir.to_str().unwrap()],
            );
            dir
        })
        .clone();
    let ckpt = dir.join("vit_base_patch16_eval.pth");
    (dir, ckpt)
}

/// The sample photos in tests/data/images (public domain, see SOURCES.md there).
pub fn shared_image(name: &str) -> PathBuf {
    let p = root().join("tests/data/images").join(name);
    assert!(p.exists(), "{} is missing from the checkout", p.display());
    p
}

/// A state_dict's keys and shapes, in order.
pub type Shapes = Vec<(String, Vec<i64>)>;

/// Every official model's state_dict keys and shapes, in the reference's order
/// (tests/data/reference/official_state_dicts.json, read off the official models).
pub fn official_state_dicts() -> Vec<(String, Shapes)> {
    let path = root().join("tests/data/reference/official_state_dicts.json");
    let text = std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("{}: {e} (part of the checkout)", path.display()));
    let all: serde_json::Value =
        serde_json::from_str(&text).expect("official_state_dicts.json parses");
    let shape = |v: &serde_json::Value| -> Vec<i64> {
        v.as_array()
            .expect("shape list")
            .iter()
            .map(|d| d.as_i64().expect("int dim"))
            .collect()
    };
    all.as_object()
        .expect("a JSON object of models")
        .iter()
        .map(|(model, sd)| {
            let keys = sd
                .as_object()
                .expect("a JSON object of keys")
                .iter()
                .map(|(k, v)| (k.clone(), shape(v)));
            (model.clone(), keys.collect())
        })
        .collect()
}

/// The keys and shapes of one official model (see [`official_state_dicts`]).
pub fn official_state_dict(model: &str) -> Shapes {
    official_state_dicts()
        .into_iter()
        .find(|(m, _)| m == model)
        .unwrap_or_else(|| panic!("{model} is not in official_state_dicts.json"))
        .1
}

/// name -> (exp_avg, exp_avg_sq, step) from an AdamW's `optimizer.state_dict()` (the parity
/// tests of pre-training and of mixed-precision training read the moments this way).
pub fn adamw_moments(
    opt: &mae::util::optim::AdamW,
) -> std::collections::HashMap<String, (tch::Tensor, tch::Tensor, f64)> {
    use mae::util::pickle::Value;
    let sd = opt.state_dict();
    let state = sd.get("state").and_then(Value::as_dict).unwrap();
    let groups = sd.get("param_groups").and_then(Value::as_list).unwrap();
    let mut out = std::collections::HashMap::new();
    for (g, group) in groups.iter().zip(&opt.param_groups) {
        let ids = g.get("params").and_then(Value::as_list).unwrap();
        for (id, name) in ids.iter().zip(&group.names) {
            let entry = &state
                .iter()
                .find(|(k, _)| k.as_int() == id.as_int())
                .unwrap()
                .1;
            let t = |k| {
                entry
                    .get(k)
                    .and_then(Value::as_tensor)
                    .unwrap()
                    .shallow_clone()
            };
            let step = t("step").double_value(&[]);
            out.insert(name.clone(), (t("exp_avg"), t("exp_avg_sq"), step));
        }
    }
    out
}
