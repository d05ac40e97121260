//! Shared by the test binaries (tests/<subject>/main.rs declares it once): paths, a scratch
//! folder per test, a process of its own for a test that seeds torch's global generator, the
//! pinned Python reference environment made by tools/setup.sh (tests that need it fail, never
//! skip, when it is missing), the fixtures the scripts of tools/fixtures write, relative errors,
//! and running the `mae` binary (one process, or ranks of a process group).
#![allow(dead_code)]
use std::collections::HashMap;
use std::ffi::OsStr;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{ChildStdout, Command, Output};
use std::sync::Mutex;

use tch::{Kind, Tensor};

// --------------------------------------------------------------------------
// paths

pub fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// A path as the `&str` an argument list takes.
pub fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

/// The running test, `module::test` (libtest names each test's thread so).
pub fn test_name() -> String {
    let name = std::thread::current().name().map(str::to_string);
    name.filter(|n| n != "main")
        .expect("called outside a test's thread")
}

/// The scratch folder of one test, target/test-scratch/BINARY/MODULE/TEST: created empty, deleted
/// with what is in it when the test passes; a failed test leaves it to look at.
#[must_use = "the folder is deleted when this is dropped"]
pub struct Scratch(PathBuf);

/// The folders of the [`Scratch`]es alive now.
static LIVE: Mutex<Vec<PathBuf>> = Mutex::new(Vec::new());

/// The running test's [`Scratch`]. One at a time per test: a second would empty the first.
pub fn scratch() -> Scratch {
    let dir = root()
        .join("target/test-scratch")
        .join(env!("CARGO_CRATE_NAME"))
        .join(test_name().replace("::", "/"));
    let mut live = LIVE.lock().unwrap_or_else(|e| e.into_inner());
    assert!(
        !live.contains(&dir),
        "{}: a second scratch() in one test",
        dir.display()
    );
    live.push(dir.clone());
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display()));
    Scratch(dir)
}

impl std::ops::Deref for Scratch {
    type Target = Path;
    fn deref(&self) -> &Path {
        &self.0
    }
}

impl AsRef<Path> for Scratch {
    fn as_ref(&self) -> &Path {
        &self.0
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let keep = std::thread::panicking();
        if keep {
            eprintln!("scratch of the failed test kept: {}", self.0.display());
        } else {
            let _ = std::fs::remove_dir_all(&self.0);
        }
        let mut live = LIVE.lock().unwrap_or_else(|e| e.into_inner());
        live.retain(|d| *d != self.0);
        // the folders above it, up to target/, once they are empty (under the lock: scratch()
        // may be creating them for another test)
        let top = root().join("target");
        let mut dir = self.0.parent();
        while let Some(d) = dir.filter(|d| !keep && *d != top) {
            if std::fs::remove_dir(d).is_err() {
                break;
            }
            dir = d.parent();
        }
    }
}

/// For a test that seeds torch's global generator (`tch::manual_seed`) and checks what it then
/// draws: runs the test again, alone, in a process of its own (this binary with the test's name
/// and `--exact`), where no test running beside it draws in between, and returns true: the
/// caller returns. In that process it returns false, and the test runs. What the test prints
/// is passed on; its failure fails the caller.
pub fn in_own_process() -> bool {
    const VAR: &str = "MAE_TEST_IN_OWN_PROCESS";
    let name = test_name();
    if std::env::var(VAR).as_deref() == Ok(name.as_str()) {
        return false;
    }
    let out = Command::new(std::env::current_exe().expect("the test binary"))
        .args([&name, "--exact", "--nocapture", "--test-threads", "1"])
        .env(VAR, &name)
        .output()
        .expect("running the test binary");
    let (stdout, stderr) = (
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
    );
    assert!(
        out.status.success(),
        "{name} failed in its own process:\n{stdout}\n{stderr}"
    );
    // the test's own lines, without libtest's
    let started = format!("test {name} ... ");
    for line in stdout.lines() {
        let line = line.strip_prefix(&started).unwrap_or(line);
        if !(line.is_empty()
            || line == "ok"
            || line == "running 1 test"
            || line.starts_with("test result: "))
        {
            println!("{line}");
        }
    }
    eprint!("{stderr}");
    true
}

/// The words of `line` (split on white space) as an argument list, each `{}` word replaced by
/// the next of `values` whole, so that a path with a space stays one argument.
pub fn argv_of(line: &str, values: &[String]) -> Vec<String> {
    let mut values = values.iter();
    let args: Vec<String> = line
        .split_whitespace()
        .map(|w| match w {
            "{}" => values.next().expect("fewer values than {}").clone(),
            w => {
                assert!(
                    !w.contains("{}"),
                    "{{}} in {w:?} of {line:?}: a value is a whole word"
                );
                w.to_string()
            }
        })
        .collect();
    assert!(values.next().is_none(), "more values than {{}} in {line:?}");
    args
}

/// `argv!("eval --resume {} --batch_size 8", ckpt.display())`: [`argv_of`] with values of any
/// `Display` type.
#[allow(unused_macros)]
macro_rules! argv {
    ($line:expr $(, $value:expr)* $(,)?) => {
        crate::common::argv_of($line, &[$($value.to_string()),*])
    };
}
#[allow(unused_imports)]
pub(crate) use argv;

/// The sample photos in tests/data/images (public domain, see SOURCES.md there).
pub fn shared_image(name: &str) -> PathBuf {
    let p = root().join("tests/data/images").join(name);
    assert!(p.exists(), "{} is missing from the checkout", p.display());
    p
}

/// The shared photos of the data pipeline tests: PNG and JPEG, baseline and progressive.
pub const PHOTOS: [&str; 6] = [
    "chelsea.png",
    "chelsea_q90.jpg",
    "coffee.png",
    "coffee_q75_progressive.jpg",
    "astronaut.png",
    "rocket.jpg",
];

/// ROOT/{train,val}/{a,b}/*.png: 32×32 images, class a dark, class b bright, with noise;
/// `n_train` a class in train, 4 in val.
pub fn two_class_images(root: &Path, n_train: u32) {
    for (split, n) in [("train", n_train), ("val", 4)] {
        for (c, base) in [("a", 40u8), ("b", 200)] {
            let dir = root.join(split).join(c);
            std::fs::create_dir_all(&dir).unwrap();
            for i in 0..n {
                let img = image::RgbImage::from_fn(32, 32, |x, y| {
                    let v = base.wrapping_add(((x * 7 + y * 13 + i * 31) % 40) as u8);
                    image::Rgb([v, v / 2, 255 - v])
                });
                img.save_with_format(dir.join(format!("{i}.png")), image::ImageFormat::Png)
                    .unwrap();
            }
        }
    }
}

// --------------------------------------------------------------------------
// the Python references

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

/// `.venv/bin/python`, or `None` after saying that the test is skipped; under CI=true a panic.
pub fn python_or_skip() -> Option<PathBuf> {
    let py = root().join(".venv/bin/python");
    if py.exists() {
        return Some(py);
    }
    assert!(
        std::env::var("CI").as_deref() != Ok("true"),
        "CI=true but {} is missing",
        py.display()
    );
    eprintln!("skipping: {} is missing (run tools/setup.sh)", py.display());
    None
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

/// Run the reference `script` (a path under tools/) writing OUT (its last argument), and read
/// OUT's tensors.
pub fn reference_tensors(script: &str, args: &[&str], out: &Path) -> HashMap<String, Tensor> {
    let mut args = args.to_vec();
    args.push(s(out));
    run_python(&root().join(script), &args);
    read_tensors(out)
}

// --------------------------------------------------------------------------
// fixtures

/// The parity fixtures of GROUP (tools/fixtures/make_parity_fixtures.py): generated once (the
/// script skips groups whose stamp matches its hash); returns the fixture directory. A missing
/// Python reference env fails the test.
pub fn parity_fixtures(group: &str) -> PathBuf {
    static GEN: Mutex<()> = Mutex::new(());
    let _guard = GEN.lock().unwrap_or_else(|e| e.into_inner());
    let dir = root().join("target/fixtures/parity");
    let script = root().join("tools/fixtures/make_parity_fixtures.py");
    run_python(&script, &[s(&dir), group]);
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
    mae::torch::serialization::load_state_dict(&path).unwrap_or_else(|e| panic!("{e:#}"))
}

/// The state dict of the ViT parity fixture TAG (`vit_NAME` or `vit_NAME_cls_token`): TAG.pth,
/// or where the fixture is TAG_head.pth (base, large, huge: one weights file a size) the encoder
/// of the MAE fixture `mae_vit_NAME.pth` (without its `norm` under global pooling, as
/// main_finetune.py drops it) and the head (and `fc_norm`) of TAG_head.pth.
pub fn vit_checkpoint(dir: &Path, tag: &str) -> Vec<(String, Tensor)> {
    if !dir.join(format!("{tag}_head.pth")).exists() {
        return load_checkpoint(dir, tag);
    }
    let head = load_checkpoint(dir, &format!("{tag}_head"));
    let global_pool = head.iter().any(|(k, _)| k.starts_with("fc_norm."));
    let name = tag.trim_end_matches("_cls_token");
    let encoder = load_checkpoint(dir, &format!("mae_{name}"))
        .into_iter()
        .filter(|(k, _)| {
            !(k.starts_with("decoder")
                || k == "mask_token"
                || global_pool && k.starts_with("norm."))
        });
    encoder.chain(head).collect()
}

/// The tensors of a safetensors file, by name.
pub fn read_tensors(path: &Path) -> HashMap<String, Tensor> {
    Tensor::read_safetensors(path)
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
        .into_iter()
        .collect()
}

/// The inputs and outputs `NAME.safetensors` of a parity fixture.
pub fn load_io(dir: &Path, name: &str) -> HashMap<String, Tensor> {
    read_tensors(&dir.join(format!("{name}.safetensors")))
}

/// The `mae eval` fixture (tools/fixtures/make_eval_fixture.py, written once: the script keeps a
/// stamp): the photo folder and its vit_base_patch16 checkpoint. The script runs once per test
/// binary: tests run in parallel, and a second run on a fresh tree would delete the folder another
/// test is reading.
pub fn eval_fixture() -> (PathBuf, PathBuf) {
    static FIXTURE: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();
    let dir = FIXTURE
        .get_or_init(|| {
            let dir = root().join("target/fixtures/eval");
            run_python(
                &root().join("tools/fixtures/make_eval_fixture.py"),
                &[s(&dir)],
            );
            dir
        })
        .clone();
    let ckpt = dir.join("vit_base_patch16_eval.pth");
    (dir, ckpt)
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

/// The tensors of a reference's output named `PREFIX…`, the prefix stripped (copies: a model
/// loaded with them does not write into the reference's tensors).
pub fn with_prefix(r: &HashMap<String, Tensor>, prefix: &str) -> Vec<(String, Tensor)> {
    r.iter()
        .filter_map(|(k, v)| Some((k.strip_prefix(prefix)?.to_string(), v.copy())))
        .collect()
}

/// The end state of [`pretrain_steps`].
pub struct PretrainRun {
    pub vs: tch::nn::VarStore,
    pub optimizer: mae::torch::optim::AdamW,
    pub scaler: mae::util::misc::NativeScalerWithGradNormCount,
    pub stats: mae::util::misc::TrainStats,
}

/// The tensors a pre-training parity reference (`tools/reference/SCRIPT`: pretrain_reference.py,
/// amp_train_reference.py) writes to DIR/reference.safetensors, and of those the initial
/// weights (`init.*`) and the batches.
pub fn pretrain_reference(
    script: &str,
    dir: &Path,
) -> (HashMap<String, Tensor>, Vec<(String, Tensor)>, Tensor) {
    let out = dir.join("reference.safetensors");
    let r = reference_tensors(&format!("tools/reference/{script}"), &[], &out);
    let init = with_prefix(&r, "init.");
    let batches = r["batches"].shallow_clone();
    (r, init, batches)
}

/// The engine's side of the pre-training parity tests (training/pretrain_steps.rs,
/// training/bf16.rs), as tools/reference/pretrain_reference.py runs them: the tiny MAE (`cfg`)
/// loaded with `init`, AdamW(0.9, 0.95) over add_weight_decay's groups with the default
/// `--weight_decay` 0.05 (as main_pretrain), lr 1e-3 (min 1e-5, 2 warm-up epochs of 4), then
/// `engine_pretrain::train_one_epoch` over `batches` at `epoch` with `accum_iter`, mask ratio
/// 0.75 and `precision`, the masking noise drawn after `tch::manual_seed(7)` (so the caller runs
/// [`in_own_process`]).
pub fn pretrain_steps(
    accum_iter: usize,
    precision: mae::torch::amp::Precision,
    cfg: mae::models_mae::MaeConfig,
    init: &[(String, Tensor)],
    batches: Vec<Tensor>,
    epoch: i64,
) -> PretrainRun {
    use mae::torch::optim::{add_weight_decay, named_parameters, AdamW};
    let args = mae::engine_pretrain::Args {
        accum_iter,
        mask_ratio: 0.75,
        precision,
        lr: mae::util::lr_sched::LrArgs {
            lr: 1e-3,
            min_lr: 1e-5,
            warmup_epochs: 2,
            epochs: 4,
        },
    };
    let device = tch::Device::Cpu;
    let mut vs = tch::nn::VarStore::new(device);
    let model = mae::models_mae::build("mae_vit_tiny_patch4", &vs.root(), cfg).unwrap();
    let init = init.iter().map(|(k, v)| (k.clone(), v.copy())).collect();
    mae::torch::state_dict::load_state_dict(&mut vs, init, true).unwrap();
    let groups = add_weight_decay(named_parameters(&vs), 0.05, &[]);
    let mut optimizer = AdamW::new(groups, args.lr.lr, (0.9, 0.95));
    let mut scaler = mae::util::misc::NativeScalerWithGradNormCount::new(false);
    let data = batches.into_iter().map(Ok);
    tch::manual_seed(7);
    let stats = mae::engine_pretrain::train_one_epoch(
        &model,
        data,
        &mut optimizer,
        device,
        epoch,
        &mut scaler,
        None,
        &args,
    )
    .unwrap();
    PretrainRun {
        vs,
        optimizer,
        scaler,
        stats,
    }
}

// --------------------------------------------------------------------------
// comparisons

/// ‖a − b‖ / ‖b‖ in f64: NaN when either holds a NaN, 0 when both are zero.
pub fn rel_err(a: &Tensor, b: &Tensor) -> f64 {
    assert_eq!(a.size(), b.size(), "shape");
    let (a, b) = (a.to_kind(Kind::Double), b.to_kind(Kind::Double));
    if a.isnan().any().int64_value(&[]) != 0 || b.isnan().any().int64_value(&[]) != 0 {
        return f64::NAN;
    }
    (&a - &b).norm().double_value(&[]) / b.norm().double_value(&[]).max(1e-300)
}

/// Asserts rel_err ≤ tol (NaN fails) and returns it.
pub fn check(what: &str, a: &Tensor, b: &Tensor, tol: f64) -> f64 {
    let e = rel_err(a, b);
    assert!(e <= tol, "{what}: relative error {e:e} > {tol:e}");
    e
}

/// A tensor's bytes in memory order (bool as one byte each).
pub fn bytes_of(t: &Tensor) -> Vec<u8> {
    let t = if t.kind() == Kind::Bool {
        t.to_kind(Kind::Uint8)
    } else {
        t.shallow_clone()
    };
    let t = t.contiguous();
    let n = t.numel() * t.kind().elt_size_in_bytes();
    let mut v = vec![0u8; n];
    if n > 0 {
        t.reshape([-1])
            .view_dtype(Kind::Uint8)
            .copy_data_u8(&mut v, n);
    }
    v
}

/// Two state dicts with the same keys in the same order, and tensors of the same dtype, shape
/// and bytes.
pub fn assert_same_tensors(a: &[(String, Tensor)], b: &[(String, Tensor)], what: &str) {
    let ka: Vec<&String> = a.iter().map(|p| &p.0).collect();
    let kb: Vec<&String> = b.iter().map(|p| &p.0).collect();
    assert_eq!(ka, kb, "{what}: keys");
    for ((k, x), (_, y)) in a.iter().zip(b) {
        assert_eq!(x.kind(), y.kind(), "{what}: {k}");
        assert_eq!(x.size(), y.size(), "{what}: {k}");
        assert!(bytes_of(x) == bytes_of(y), "{what}: {k} differs");
    }
}

/// name -> (exp_avg, exp_avg_sq, step) from an AdamW's `optimizer.state_dict()` (the parity
/// tests of pre-training and of mixed-precision training read the moments this way).
pub fn adamw_moments(opt: &mae::torch::optim::AdamW) -> HashMap<String, (Tensor, Tensor, f64)> {
    use mae::torch::serialization::pickle::Value;
    let sd = opt.state_dict();
    let state = sd.get("state").and_then(Value::as_dict).unwrap();
    let groups = sd.get("param_groups").and_then(Value::as_list).unwrap();
    let mut out = HashMap::new();
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

/// The largest relative error ‖a − b‖ / ‖a‖ over the model tensors of two checkpoints. The key
/// third of `qkv.bias` is left out: softmax ignores it, its gradient is float round-off, which
/// Adam scales up to full-size steps (in one process as much as in two).
pub fn max_rel_err(a: &Path, b: &Path) -> (f64, String) {
    let load = |p: &Path| -> std::collections::BTreeMap<String, Tensor> {
        mae::torch::serialization::load_state_dict(p)
            .unwrap_or_else(|e| panic!("{e:#}"))
            .into_iter()
            .collect()
    };
    let (a, b) = (load(a), load(b));
    assert_eq!(
        a.keys().collect::<Vec<_>>(),
        b.keys().collect::<Vec<_>>(),
        "key sets"
    );
    let mut worst = (0f64, String::new());
    for (k, ta) in &a {
        let (mut ta, mut tb) = (ta.to_kind(Kind::Double), b[k].to_kind(Kind::Double));
        if k.ends_with("qkv.bias") {
            let d = ta.size()[0] / 3;
            ta = Tensor::cat(&[ta.narrow(0, 0, d), ta.narrow(0, 2 * d, d)], 0);
            tb = Tensor::cat(&[tb.narrow(0, 0, d), tb.narrow(0, 2 * d, d)], 0);
        }
        let den = ta.norm().double_value(&[]).max(1e-12);
        let err = (&ta - &tb).norm().double_value(&[]) / den;
        if err > worst.0 {
            worst = (err, k.clone());
        }
    }
    worst
}

// --------------------------------------------------------------------------
// the mae binary

/// `mae args…`: the binary of this build, run from the repository root.
pub fn mae_command<S: AsRef<OsStr>>(args: impl IntoIterator<Item = S>) -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_mae"));
    c.args(args).current_dir(root());
    c
}

/// `mae args…` run to its end.
pub fn mae_output<S: AsRef<OsStr>>(args: impl IntoIterator<Item = S>) -> Output {
    mae_command(args).output().expect("running mae")
}

/// The stdout of `mae args…` run with one thread (OMP_NUM_THREADS=1), which must succeed.
pub fn mae_ok<S: AsRef<OsStr>>(args: impl IntoIterator<Item = S>) -> String {
    let args: Vec<S> = args.into_iter().collect();
    let what = args
        .iter()
        .map(|a| a.as_ref().to_string_lossy())
        .collect::<Vec<_>>();
    let what = format!("mae {what:?}");
    let out = mae_command(&args)
        .env("OMP_NUM_THREADS", "1")
        .output()
        .expect("running mae");
    stdout_ok(&out, &what)
}

/// The stderr of `mae args…`, which must fail with exit status 1 (an error, not a panic).
pub fn mae_err<S: AsRef<OsStr>>(args: impl IntoIterator<Item = S>) -> String {
    let args: Vec<S> = args.into_iter().collect();
    let out = mae_output(&args);
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    let what = args
        .iter()
        .map(|a| a.as_ref().to_string_lossy())
        .collect::<Vec<_>>();
    assert_eq!(out.status.code(), Some(1), "mae {what:?}: {stderr}");
    assert!(!stderr.contains("panicked"), "mae {what:?}: {stderr}");
    stderr
}

/// The stdout of a run that must have succeeded; else a panic showing both streams.
pub fn stdout_ok(out: &Output, what: &str) -> String {
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "{what} failed:\n{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    stdout
}

/// stdout followed by stderr.
pub fn output_text(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr)
}

/// The official summary line `* Acc@1 X Acc@5 Y loss Z` of a run's stdout.
pub fn acc_line(stdout: &str) -> String {
    stdout
        .lines()
        .find(|l| l.starts_with("* Acc@1"))
        .unwrap_or_else(|| panic!("no '* Acc@1' line in:\n{stdout}"))
        .to_string()
}

// --------------------------------------------------------------------------
// ranks of a process group

/// What a launcher (torchrun, SLURM, Open MPI) or the caller's shell may have set that would
/// make a `mae` child join another group.
pub const LAUNCHER_VARS: [&str; 9] = [
    "RANK",
    "WORLD_SIZE",
    "LOCAL_RANK",
    "MASTER_ADDR",
    "MASTER_PORT",
    "SLURM_PROCID",
    "OMPI_COMM_WORLD_RANK",
    "TORCHELASTIC_USE_AGENT_STORE",
    "GLOO_SOCKET_IFNAME",
];

/// `c` with one thread and none of [`LAUNCHER_VARS`] from this process's environment.
pub fn without_launcher(c: &mut Command) -> &mut Command {
    c.env("OMP_NUM_THREADS", "1");
    for k in LAUNCHER_VARS {
        c.env_remove(k);
    }
    c
}

/// `.venv/bin/torchrun`, or a panic saying how to get it.
pub fn torchrun() -> PathBuf {
    let torchrun = root().join(".venv/bin/torchrun");
    assert!(
        torchrun.exists(),
        "{} is missing: run tools/setup.sh",
        torchrun.display()
    );
    torchrun
}

/// Pre-training on 12 Fashion-MNIST images, one epoch: 3 steps of 4 in one process, 3 steps of
/// 2 on each of 2 ranks (add `--batch_size` and `--output_dir`).
pub const PRETRAIN_12: &str = "pretrain --dataset fashion_mnist --train_subset 12 \
    --model mae_vit_tiny_patch4 --input_size 32 --epochs 1 --warmup_epochs 1 --blr 1e-1 \
    --norm_pix_loss --num_workers 1 --device cpu --seed=5";

/// A pre-training run of 1000 epochs on `subset` images, batch 2, that the test stops.
pub fn endless_pretrain(subset: &str, output_dir: &str, timeout: &str) -> Vec<String> {
    argv!(
        "pretrain --dataset fashion_mnist --train_subset {} --model mae_vit_tiny_patch4 \
         --input_size 32 --epochs 1000 --batch_size 2 --num_workers 1 --device cpu \
         --output_dir {} --dist_timeout {}",
        subset,
        output_dir,
        timeout
    )
}

/// Reads rank 0's stdout until it prints `needle`, then drains the rest in a thread; returns
/// what it printed so far.
pub fn read_until(mut stdout: ChildStdout, needle: &str) -> String {
    let mut seen = String::new();
    let mut buf = [0u8; 4096];
    while !seen.contains(needle) {
        let n = stdout.read(&mut buf).unwrap();
        assert!(n > 0, "rank 0 stopped before '{needle}':\n{seen}");
        seen.push_str(&String::from_utf8_lossy(&buf[..n]));
    }
    std::thread::spawn(move || std::io::copy(&mut stdout, &mut std::io::sink()));
    seen
}
