//! `torch::serialization` against files written by PyTorch
//! (tools/fixtures/make_official_checkpoints.py: the small models of weights/ in f32, f16 and
//! bf16, the MAE ones as training checkpoints, in target/fixtures/checkpoint; and one large file,
//! the ViT-H MAE parity fixture), files PyTorch must read back, hostile or broken files, and
//! `mae inspect` on them. Without the Python env (.venv) the Python-backed tests are skipped,
//! unless CI=true, where they fail.
use crate::common::{self, argv};
use mae::torch::serialization::{self, Value};
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;
use tch::{Kind, Tensor};

/// `tools/fixtures/make_official_checkpoints.py args…`; its stdout and stderr.
fn make_official_checkpoints(args: &[&str]) -> String {
    let py = common::python_or_skip().expect("python");
    let out = Command::new(py)
        .arg(common::root().join("tools/fixtures/make_official_checkpoints.py"))
        .args(args)
        .output()
        .expect("running tools/fixtures/make_official_checkpoints.py");
    let text = common::output_text(&out);
    assert!(
        out.status.success(),
        "make_official_checkpoints.py {args:?} failed:\n{text}"
    );
    text
}

/// The fixture directory, generated (only what is missing) on first use.
fn fixtures() -> Option<&'static Path> {
    static DIR: OnceLock<Option<PathBuf>> = OnceLock::new();
    DIR.get_or_init(|| {
        common::python_or_skip()?;
        let dir = common::root().join("target/fixtures/checkpoint");
        make_official_checkpoints(&["generate", dir.to_str().unwrap()]);
        Some(dir)
    })
    .as_deref()
}

/// Tensors by path: dict keys and list indices joined by '/', as the Python manifest.
fn walk<'a>(v: &'a Value, path: &str, out: &mut Vec<(String, &'a Tensor)>) {
    let join = |k: &str| {
        if path.is_empty() {
            k.to_string()
        } else {
            format!("{path}/{k}")
        }
    };
    match v {
        Value::Tensor(t) => out.push((path.to_string(), t)),
        Value::Dict(items) => {
            for (k, x) in items {
                let k = match k {
                    Value::Str(s) => s.clone(),
                    other => other.to_string(),
                };
                walk(x, &join(&k), out);
            }
        }
        Value::List(items) | Value::Tuple(items) => items
            .iter()
            .enumerate()
            .for_each(|(i, x)| walk(x, &join(&i.to_string()), out)),
        Value::Object { state: Some(s), .. } => walk(s, path, out),
        _ => {}
    }
}

fn kind_of(dtype: &str) -> Kind {
    match dtype {
        "float32" => Kind::Float,
        "float16" => Kind::Half,
        "bfloat16" => Kind::BFloat16,
        "float64" => Kind::Double,
        "int64" => Kind::Int64,
        "int32" => Kind::Int,
        "int16" => Kind::Int16,
        "int8" => Kind::Int8,
        "uint8" => Kind::Uint8,
        "bool" => Kind::Bool,
        d => panic!("dtype {d}"),
    }
}

/// Every tensor has the dtype, shape, stride and CRC-32 Python recorded, and tensors that
/// shared a storage in Python share one here (same storage start).
fn check_against_manifest(name: &str, root: &Value) -> serde_json::Value {
    let dir = fixtures().unwrap();
    let man: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dir.join(format!("{name}.manifest.json"))).unwrap())
            .unwrap();
    let expected = man["tensors"].as_object().unwrap();
    let mut got = vec![];
    walk(root, "", &mut got);
    let got_paths: Vec<&str> = got.iter().map(|(p, _)| p.as_str()).collect();
    let want_paths: Vec<&str> = expected.keys().map(|k| k.as_str()).collect();
    let (mut a, mut b) = (got_paths.clone(), want_paths.clone());
    a.sort();
    b.sort();
    assert_eq!(a, b, "{name}: tensor paths");
    let mut starts: HashMap<i64, usize> = HashMap::new();
    for (path, t) in &got {
        let e = &expected[path.as_str()];
        let shape: Vec<i64> = e["shape"]
            .as_array()
            .unwrap()
            .iter()
            .map(|x| x.as_i64().unwrap())
            .collect();
        let stride: Vec<i64> = e["stride"]
            .as_array()
            .unwrap()
            .iter()
            .map(|x| x.as_i64().unwrap())
            .collect();
        assert_eq!(
            t.kind(),
            kind_of(e["dtype"].as_str().unwrap()),
            "{name}: {path} dtype"
        );
        assert_eq!(t.size(), shape, "{name}: {path} shape");
        if t.numel() > 0 {
            assert_eq!(t.stride(), stride, "{name}: {path} stride");
            let start = t.data_ptr() as usize
                - e["storage_offset"].as_u64().unwrap() as usize * t.kind().elt_size_in_bytes();
            let sid = e["storage"].as_i64().unwrap();
            assert_eq!(
                *starts.entry(sid).or_insert(start),
                start,
                "{name}: {path} does not share storage {sid}"
            );
        }
        assert_eq!(
            crc32fast::hash(&common::bytes_of(t)) as u64,
            e["crc32"].as_u64().unwrap(),
            "{name}: {path} values"
        );
    }
    man
}

/// The keys and shapes of the model the fixture NAME was shaped like: an official one, or the
/// checkpoint of weights/ it took them from.
fn check_model_keys(model: &str, sd: &[(String, Tensor)]) {
    let mut want: Vec<(String, Vec<i64>)> = match model {
        "mae_vit_mini_patch4" | "vit_mini_patch4" => {
            let stage = if model.starts_with("mae_") {
                "pretrain"
            } else {
                "finetuned"
            };
            let path = common::root().join(format!("weights/mae_{stage}_fmnist_mini_patch4.pth"));
            let sd = serialization::load_state_dict(&path).unwrap();
            sd.into_iter().map(|(k, t)| (k, t.size())).collect()
        }
        _ => common::official_state_dict(model),
    };
    let mut got: Vec<(String, Vec<i64>)> = sd.iter().map(|(k, t)| (k.clone(), t.size())).collect();
    want.sort();
    got.sort();
    assert_eq!(got, want, "{model}: keys and shapes");
}

#[test]
fn checkpoints_from_python_are_bit_exact() {
    let Some(dir) = fixtures() else { return };
    for (model, training) in [("mae_vit_mini_patch4", true), ("vit_mini_patch4", false)] {
        for d in ["f32", "f16", "bf16"] {
            let name = format!("{model}_{d}");
            let root = serialization::load(&dir.join(format!("{name}.pth"))).unwrap();
            check_against_manifest(&name, &root);
            if training {
                // What the official training checkpoints carry besides the model.
                assert_eq!(root.get("epoch").and_then(Value::as_int), Some(399));
                let args = root.get("args").unwrap();
                assert!(
                    matches!(args, Value::Object { class, .. } if class == "argparse.Namespace")
                );
                assert_eq!(args.get("batch_size").and_then(Value::as_int), Some(64));
                assert_eq!(args.get("mask_ratio").and_then(Value::as_float), Some(0.75));
                assert!(args.get("lr").unwrap().is_none());
                assert!(args
                    .to_string()
                    .starts_with("argparse.Namespace(batch_size=64, epochs=400,"));
                assert_eq!(
                    root.get("scaler")
                        .and_then(|s| s.get("scale"))
                        .and_then(Value::as_float),
                    Some(65536.0)
                );
                let groups = root
                    .get("optimizer")
                    .and_then(|o| o.get("param_groups"))
                    .and_then(Value::as_list)
                    .unwrap();
                assert_eq!(groups[0].get("betas").unwrap().to_string(), "(0.9, 0.95)");
                assert_eq!(groups[1].get("params").unwrap().to_string(), "[3, 4, 5]");
                let nested = root.get("views").and_then(|v| v.get("nested")).unwrap();
                assert_eq!(
                    nested.as_list().unwrap()[..3]
                        .iter()
                        .map(|v| v.to_string())
                        .collect::<Vec<_>>(),
                    [
                        "1",
                        "(2, 3.25, 'x')",
                        "{'k': None, 7: True, 'bytes': b'\\x00\\xffab'}"
                    ]
                );
            }
            // The Python-written safetensors of the contiguous state dict holds the same bits.
            let sd = serialization::state_dict(root).unwrap();
            check_model_keys(model, &sd);
            let st =
                serialization::load_state_dict(&dir.join(format!("{name}.contig.safetensors")))
                    .unwrap();
            let st: HashMap<String, Tensor> = st.into_iter().collect();
            for (k, t) in &sd {
                assert_eq!(common::bytes_of(t), common::bytes_of(&st[k]), "{name}: {k}");
            }
        }
    }
}

/// The large-file case: the 2.6 GB ViT-H MAE of the parity tests (torch.save of f32 tensors of
/// up to 26 MB each), its manifest written by Python from the same file.
#[test]
fn a_large_checkpoint_from_python_is_bit_exact() {
    let Some(dir) = fixtures() else { return };
    let _big = common::big_model_lock();
    let pth = common::parity_fixtures("mae_huge").join("mae_vit_huge_patch14.pth");
    let man = dir.join("mae_vit_huge_patch14.manifest.json");
    make_official_checkpoints(&[
        "manifest",
        common::s(&pth),
        common::s(&man),
        "mae_vit_huge_patch14",
    ]);
    let root = serialization::load(&pth).unwrap();
    check_against_manifest("mae_vit_huge_patch14", &root);
    check_model_keys(
        "mae_vit_huge_patch14",
        &serialization::state_dict(root).unwrap(),
    );
}

#[test]
fn python_to_rust_to_python_round_trip() {
    let Some(dir) = fixtures() else { return };
    let tmp = common::scratch();
    for name in [
        "mae_vit_mini_patch4_bf16",
        "mae_vit_mini_patch4_f16",
        "vit_mini_patch4_f32",
    ] {
        let src = dir.join(format!("{name}.pth"));
        let out = tmp.join(format!("{name}.pth"));
        serialization::save(&out, &serialization::load(&src).unwrap()).unwrap();
        let text =
            make_official_checkpoints(&["compare", src.to_str().unwrap(), out.to_str().unwrap()]);
        assert!(text.contains("bit-identical"), "{text}");
        // And Rust reads its own file back identically.
        check_against_manifest(name, &serialization::load(&out).unwrap());
    }
}

/// The values tools/fixtures/make_official_checkpoints.py `pattern` expects.
fn pattern(kind: Kind, shape: &[i64]) -> Tensor {
    let n: i64 = shape.iter().product();
    let i = Tensor::arange(n, (Kind::Int64, tch::Device::Cpu));
    let k = (&i * 7).remainder(251);
    let v = match kind {
        Kind::Bool => i.remainder(2).to_kind(Kind::Bool),
        Kind::Uint8 => k.to_kind(kind),
        Kind::Float | Kind::Half | Kind::BFloat16 | Kind::Double => {
            ((k - 125).to_kind(Kind::Double) / 8.0).to_kind(kind)
        }
        _ => (k - 125).to_kind(kind),
    };
    v.reshape(shape)
}

#[test]
fn rust_to_python_round_trip() {
    if common::python_or_skip().is_none() {
        return;
    }
    let tmp = common::scratch();
    let kinds = [
        Kind::Float,
        Kind::Half,
        Kind::BFloat16,
        Kind::Double,
        Kind::Int64,
        Kind::Int,
        Kind::Int16,
        Kind::Int8,
        Kind::Uint8,
        Kind::Bool,
    ];
    let mut sd: Vec<(String, Tensor)> = kinds
        .iter()
        .enumerate()
        .map(|(i, &k)| {
            (
                format!(
                    "pattern.{}",
                    mae::torch::serialization::pickle::kind_name(k)
                ),
                pattern(k, &[3 + i as i64, 5, 2]),
            )
        })
        .collect();
    sd.push(("pattern.scalar".into(), pattern(Kind::Float, &[])));
    sd.push(("pattern.empty".into(), pattern(Kind::Half, &[0, 4])));
    let base = pattern(Kind::BFloat16, &[6, 10]);
    sd.push(("views.transposed".into(), base.transpose(0, 1)));
    sd.push(("views.narrow".into(), base.narrow(0, 2, 3)));
    sd.push(("views.base".into(), base));
    let pth = tmp.join("rust.pth");
    let st = tmp.join("rust.safetensors");
    serialization::save_state_dict(&pth, &sd).unwrap();
    serialization::save_safetensors(&st, &sd).unwrap();
    let text =
        make_official_checkpoints(&["check-rust", pth.to_str().unwrap(), st.to_str().unwrap()]);
    assert!(text.contains("bit-identical"), "{text}");
    // Rust reads both back bit-exactly too.
    for path in [&pth, &st] {
        let back: HashMap<String, Tensor> = serialization::load_state_dict(path)
            .unwrap()
            .into_iter()
            .collect();
        for (k, t) in &sd {
            assert_eq!(back[k].kind(), t.kind(), "{k}");
            assert_eq!(back[k].size(), t.size(), "{k}");
            assert_eq!(common::bytes_of(&back[k]), common::bytes_of(t), "{k}");
        }
    }

    // A full official state dict that the reference model would accept (same keys, shapes).
    let sd: Vec<(String, Tensor)> = common::official_state_dict("vit_base_patch16")
        .into_iter()
        .map(|(k, shape)| (k, pattern(Kind::Float, &shape)))
        .collect();
    serialization::save_state_dict(&pth, &sd).unwrap();
    serialization::save_safetensors(&st, &sd).unwrap();
    let text = make_official_checkpoints(&[
        "check-rust",
        pth.to_str().unwrap(),
        st.to_str().unwrap(),
        "vit_base_patch16",
    ]);
    assert!(text.contains("bit-identical"), "{text}");
}

// ------------------------------------------------------------------------------------------
// Hostile and broken files (no Python needed)
// ------------------------------------------------------------------------------------------

/// A stored zip, written independently of the crate's writer; `declare` overrides the size
/// the central directory states for an entry.
fn zip(entries: &[(&str, &[u8])], declare: Option<(&str, u64)>) -> Vec<u8> {
    let mut out = vec![];
    let mut cd = vec![];
    for (name, data) in entries {
        let crc = crc32fast::hash(data);
        let offset = out.len() as u32;
        let size = match declare {
            Some((n, s)) if n == *name => s as u32,
            _ => data.len() as u32,
        };
        out.extend_from_slice(b"PK\x03\x04\x14\x00\x00\x00\x00\x00\x00\x00\x00\x00");
        out.extend_from_slice(&crc.to_le_bytes());
        out.extend_from_slice(&(data.len() as u32).to_le_bytes());
        out.extend_from_slice(&(data.len() as u32).to_le_bytes());
        out.extend_from_slice(&(name.len() as u16).to_le_bytes());
        out.extend_from_slice(&[0, 0]);
        out.extend_from_slice(name.as_bytes());
        out.extend_from_slice(data);
        cd.extend_from_slice(b"PK\x01\x02\x14\x00\x14\x00\x00\x00\x00\x00\x00\x00\x00\x00");
        cd.extend_from_slice(&crc.to_le_bytes());
        cd.extend_from_slice(&size.to_le_bytes());
        cd.extend_from_slice(&size.to_le_bytes());
        cd.extend_from_slice(&(name.len() as u16).to_le_bytes());
        cd.extend_from_slice(&[0; 12]);
        cd.extend_from_slice(&offset.to_le_bytes());
        cd.extend_from_slice(name.as_bytes());
    }
    let cd_offset = out.len() as u32;
    out.extend_from_slice(&cd);
    out.extend_from_slice(b"PK\x05\x06\0\0\0\0");
    out.extend_from_slice(&(entries.len() as u16).to_le_bytes());
    out.extend_from_slice(&(entries.len() as u16).to_le_bytes());
    out.extend_from_slice(&(cd.len() as u32).to_le_bytes());
    out.extend_from_slice(&cd_offset.to_le_bytes());
    out.extend_from_slice(&[0, 0]);
    out
}

/// `{'w': <float32 tensor of `numel` from storage '0'>}` as torch pickles it.
fn tensor_pickle(numel: u8) -> Vec<u8> {
    let mut p = b"\x80\x02}q\x00X\x01\x00\x00\x00wctorch._utils\n_rebuild_tensor_v2\n((X\x07\x00\x00\x00storage".to_vec();
    p.extend_from_slice(b"ctorch\nFloatStorage\nX\x01\x00\x00\x000X\x03\x00\x00\x00cpuK");
    p.push(numel);
    p.extend_from_slice(b"tQK\x00K");
    p.push(numel);
    p.extend_from_slice(b"\x85K\x01\x85\x89ccollections\nOrderedDict\n)RtRs.");
    p
}

/// DIR/NAME holding `bytes` fails to load, with an error naming the file and holding `wanted`.
fn expect_error(dir: &Path, name: &str, bytes: &[u8], wanted: &[&str]) {
    let path = dir.join(name);
    std::fs::write(&path, bytes).unwrap();
    let err = match serialization::load(&path) {
        Ok(v) => panic!("{name}: loaded {v}"),
        Err(e) => format!("{e:#}"),
    };
    eprintln!("{err}");
    assert!(
        err.contains(name),
        "{name}: error does not name the file: {err}"
    );
    for w in wanted {
        assert!(err.contains(w), "{name}: error lacks {w:?}: {err}");
    }
}

#[test]
fn valid_hand_made_zip_loads() {
    let data: Vec<u8> = [1.0f32, 2.0, 3.0, 4.0]
        .iter()
        .flat_map(|x| x.to_le_bytes())
        .collect();
    let bytes = zip(
        &[
            ("any name/data.pkl", &tensor_pickle(4)),
            ("any name/data/0", &data),
            ("any name/version", b"3\n"),
        ],
        None,
    );
    let dir = common::scratch();
    std::fs::write(dir.join("ok.pth"), &bytes).unwrap();
    let sd = serialization::load_state_dict(&dir.join("ok.pth")).unwrap();
    assert_eq!(sd[0].0, "w");
    assert_eq!(
        Vec::<f32>::try_from(&sd[0].1).unwrap(),
        [1.0, 2.0, 3.0, 4.0]
    );
}

#[test]
fn truncated_files_are_refused() {
    let dir = common::scratch();
    let sd = vec![(
        "a".to_string(),
        Tensor::arange(1000, (Kind::Float, tch::Device::Cpu)),
    )];
    let path = dir.join("full.pth");
    serialization::save_state_dict(&path, &sd).unwrap();
    let bytes = std::fs::read(&path).unwrap();
    for cut in [
        1,
        4,
        30,
        100,
        bytes.len() / 2,
        bytes.len() - 200,
        bytes.len() - 23,
        bytes.len() - 1,
    ] {
        expect_error(&dir, &format!("truncated_{cut}.pth"), &bytes[..cut], &[]);
    }
}

#[test]
fn flipped_pickle_byte_is_refused() {
    let dir = common::scratch();
    let data = [0u8; 16];
    let pkl = tensor_pickle(4);
    let good = zip(&[("a/data.pkl", &pkl), ("a/data/0", &data)], None);
    // Caught by the CRC.
    let mut bad = good.clone();
    bad[30 + "a/data.pkl".len() + 20] ^= 0x40;
    expect_error(&dir, "flipped.pth", &bad, &["CRC"]);
    // With a matching CRC, every single-byte corruption of the pickle errors or loads, no panic.
    for i in 0..pkl.len() {
        for x in [0x01, 0x80, 0xff] {
            let mut p = pkl.clone();
            p[i] ^= x;
            let path = dir.join("f.pth");
            std::fs::write(&path, zip(&[("a/data.pkl", &p), ("a/data/0", &data)], None)).unwrap();
            let _ = serialization::load(&path);
        }
    }
}

#[test]
fn os_system_is_refused_and_not_run() {
    let dir = common::scratch();
    let marker = dir.join("pwned");
    let cmd = format!("touch {}", marker.display());
    let mut p = b"\x80\x02cos\nsystem\nX".to_vec();
    p.extend_from_slice(&(cmd.len() as u32).to_le_bytes());
    p.extend_from_slice(cmd.as_bytes());
    p.extend_from_slice(b"\x85R.");
    expect_error(
        &dir,
        "os_system.pth",
        &zip(&[("a/data.pkl", &p)], None),
        &["os.system", "could execute code"],
    );
    let mut p2 = p.clone();
    p2.splice(3..12, b"posix\nsystem\n".iter().copied());
    expect_error(
        &dir,
        "posix_system.pth",
        &zip(&[("a/data.pkl", &p2)], None),
        &["posix.system"],
    );
    let p3 = b"\x80\x02csubprocess\nPopen\nX\x02\x00\x00\x00ls\x85R.";
    expect_error(
        &dir,
        "subprocess.pth",
        &zip(&[("a/data.pkl", p3)], None),
        &["subprocess.Popen"],
    );
    assert!(!marker.exists(), "the pickle's command ran");
}

#[test]
fn builtins_eval_is_refused() {
    let dir = common::scratch();
    let p = b"\x80\x02cbuiltins\neval\nX\x0b\x00\x00\x00print(\"hi\")\x85R.";
    expect_error(
        &dir,
        "eval.pth",
        &zip(&[("a/data.pkl", p)], None),
        &["builtins.eval"],
    );
    // The protocol-4 spelling: STACK_GLOBAL.
    let p = b"\x80\x04\x8c\x08builtins\x8c\x04exec\x93X\x01\x00\x00\x001\x85R.";
    expect_error(
        &dir,
        "exec.pth",
        &zip(&[("a/data.pkl", p)], None),
        &["builtins.exec"],
    );
    let p = b"\x80\x02cbuiltins\ngetattr\n.";
    expect_error(
        &dir,
        "getattr.pth",
        &zip(&[("a/data.pkl", p)], None),
        &["builtins.getattr"],
    );
}

#[test]
fn unknown_globals_stay_opaque() {
    // A Namespace-like class that is merely referenced: printed, never called.
    let p = b"\x80\x02}X\x01\x00\x00\x00acmymodule\nThing\n)\x81}X\x01\x00\x00\x00xK\x05sbs.";
    let dir = common::scratch();
    std::fs::write(dir.join("o.pth"), zip(&[("a/data.pkl", p)], None)).unwrap();
    let v = serialization::load(&dir.join("o.pth")).unwrap();
    assert_eq!(v.to_string(), "{'a': mymodule.Thing(x=5)}");
    let err = format!(
        "{:#}",
        serialization::load_state_dict(&dir.join("o.pth")).unwrap_err()
    );
    assert!(
        err.contains("'a'") && err.contains("mymodule.Thing"),
        "{err}"
    );
}

#[test]
fn storage_larger_than_its_entry_is_refused() {
    let dir = common::scratch();
    let data = [0u8; 16]; // 4 floats, but the pickle claims 200
    let bytes = zip(
        &[("a/data.pkl", &tensor_pickle(200)), ("a/data/0", &data)],
        None,
    );
    expect_error(
        &dir,
        "short_storage.pth",
        &bytes,
        &["a/data/0", "claims 200 elements", "16 bytes"],
    );
}

#[test]
fn view_past_its_storage_is_refused() {
    let dir = common::scratch();
    let mut p = tensor_pickle(4);
    // size (4,) -> (9,) with the storage still 4 elements
    let at = p.windows(3).position(|w| w == b"K\x04\x85").unwrap();
    p[at + 1] = 9;
    let bytes = zip(&[("a/data.pkl", &p), ("a/data/0", &[0u8; 16])], None);
    expect_error(
        &dir,
        "view_past_storage.pth",
        &bytes,
        &["reach past the storage"],
    );
}

#[test]
fn zip_bomb_sizes_are_refused() {
    let dir = common::scratch();
    let data = [0u8; 16];
    let bytes = zip(
        &[("a/data.pkl", &tensor_pickle(4)), ("a/data/0", &data)],
        Some(("a/data/0", 0xFFFF_FFF0)),
    );
    expect_error(&dir, "bomb.pth", &bytes, &["a/data/0", "past the end"]);
    let bytes = zip(
        &[("a/data.pkl", &tensor_pickle(4)), ("a/data/0", &data)],
        Some(("a/data.pkl", 3_000_000_000)),
    );
    expect_error(&dir, "bomb_pkl.pth", &bytes, &["a/data.pkl"]);
}

#[test]
fn legacy_empty_and_garbage_files_are_refused() {
    let dir = common::scratch();
    let legacy = b"\x80\x02\x8a\x0al\xfc\x9cF\xf9 j\xa8P\x19.\x80\x02M\xe9\x03.";
    expect_error(
        &dir,
        "legacy.pth",
        legacy,
        &["legacy (pre-1.6, non-zip) torch.save format", "truncated"],
    );
    expect_error(&dir, "empty.pth", b"", &["empty file"]);
    let mut x = 0x9e3779b97f4a7c15u64;
    let garbage: Vec<u8> = (0..4096)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x >> 24) as u8
        })
        .collect();
    expect_error(&dir, "garbage.pth", &garbage, &["not a PyTorch"]);
    let mut zipish = b"PK\x03\x04".to_vec();
    zipish.extend_from_slice(&garbage);
    expect_error(
        &dir,
        "garbage_zip.pth",
        &zipish,
        &["end-of-central-directory"],
    );
    expect_error(
        &dir,
        "no_pickle.pth",
        &zip(&[("a/version", b"3\n")], None),
        &["no a/data.pkl"],
    );
    let mut st = 100u64.to_le_bytes().to_vec();
    st.extend_from_slice(
        b"{\"w\": {\"dtype\": \"F32\", \"shape\": [1000000], \"data_offsets\": [0, 4000000]}}",
    );
    st.resize(108, b' ');
    expect_error(&dir, "short.safetensors", &st, &["data_offsets"]);
}

/// `mae inspect` (the binary) names the model of every reference checkpoint.
#[test]
fn inspect_names_the_model_of_every_reference_checkpoint() {
    let Some(dir) = fixtures() else { return };
    let huge = common::parity_fixtures("mae_huge").join("mae_vit_huge_patch14.pth");
    let cases = [
        (
            dir.join("mae_vit_mini_patch4_f32.pth"),
            "mae_vit_mini_patch4: MAE pre-training model with decoder (64-d, 4 blocks)",
            "input 32x32",
            "f32",
        ),
        (
            dir.join("mae_vit_mini_patch4_bf16.pth"),
            "mae_vit_mini_patch4: MAE pre-training model",
            "input 32x32",
            "bf16",
        ),
        (
            dir.join("vit_mini_patch4_f16.pth"),
            "vit_mini_patch4: fine-tuned classifier, global average pooling, 10 classes",
            "input 32x32",
            "f16",
        ),
        (
            huge,
            "mae_vit_huge_patch14: MAE pre-training model with decoder (512-d, 8 blocks)",
            "input 224x224",
            "f32",
        ),
    ];
    for (path, model_line, input, dtype) in cases {
        let name = path.file_name().unwrap().to_string_lossy();
        let stdout = common::mae_ok(argv!("inspect {}", path.display()));
        let line = stdout
            .lines()
            .find(|l| l.starts_with("model: "))
            .unwrap_or_else(|| panic!("{name}: no model line:\n{stdout}"));
        assert!(line.contains(model_line), "{name}: {line}");
        assert!(line.contains(input), "{name}: {line}");
        assert!(stdout.contains("  pos_embed"), "{name}: tensors not listed");
        assert!(
            stdout.contains(&format!("dtypes: {dtype}")),
            "{name}: dtype line missing"
        );
    }
    // Training checkpoints: the extras are shown, argparse.Namespace as an opaque value.
    let stdout = common::mae_ok(argv!(
        "inspect {}",
        dir.join("mae_vit_mini_patch4_f32.pth").display()
    ));
    for want in [
        "'optimizer'",
        "'epoch'",
        "argparse.Namespace(",
        "parameters: ",
    ] {
        assert!(stdout.contains(want), "{want} missing:\n{stdout}");
    }
}

/// A broken file makes `mae inspect` exit non-zero with the file named, without a panic.
#[test]
fn inspect_reports_bad_files() {
    let d = common::scratch();
    let bad = d.join("broken.pth");
    std::fs::write(&bad, b"PK\x03\x04 not really a zip").unwrap();
    let stderr = common::mae_err(argv!("inspect {}", bad.display()));
    assert!(stderr.contains("broken.pth"), "{stderr}");
}

/// `mae inspect --model` reports keys against a chosen model as `load_state_dict(strict=False)`.
#[test]
fn inspect_checks_keys_against_a_model() {
    let Some(dir) = fixtures() else { return };
    let run = |file: &str, model: &str| {
        let stdout = common::mae_ok(argv!(
            "inspect {} --model {}",
            dir.join(file).display(),
            model
        ));
        stdout.lines().last().unwrap_or_default().to_string()
    };
    let line = run("mae_vit_mini_patch4_f32.pth", "mae_vit_mini_patch4");
    assert_eq!(
        line,
        "check: all 134 keys load into mae_vit_mini_patch4 (names and shapes match)"
    );
    // The fine-tuning start: the encoder loads, the new head and fc_norm are missing.
    let line = run("mae_vit_mini_patch4_f32.pth", "vit_mini_patch4");
    assert!(
        line.contains(
            r#"missing_keys=["fc_norm.bias", "fc_norm.weight", "head.bias", "head.weight"]"#
        ),
        "{line}"
    );
    assert!(
        line.contains(r#"unexpected_keys=["mask_token", "decoder_pos_embed", "norm.weight""#),
        "{line}"
    );
    let line = run("vit_mini_patch4_f16.pth", "vit_tiny_patch4");
    assert!(
        line.contains(
            "size mismatch for blocks.0.attn.qkv.weight: copying a param with shape [384, 128]"
        ),
        "{line}"
    );
}

/// A file named like an official checkpoint must carry the published md5 prefix.
#[test]
fn inspect_verifies_official_md5_prefixes() {
    let d = common::scratch();
    let fake = d.join("mae_pretrain_vit_base.pth");
    std::fs::write(&fake, b"abc").unwrap();
    let stderr = common::mae_err(argv!("inspect {}", fake.display()));
    // md5("abc") = 900150983cd24fb0d6963f7d28e17f72 (RFC 1321 test suite)
    assert!(
        stderr.contains("md5 900150983cd24fb0d6963f7d28e17f72 does not start with 8cad7c"),
        "{stderr}"
    );
    let check = mae::interop::detect::verify_md5(&fake).unwrap();
    assert!(check.mismatch);
    assert!(
        check.line.contains("mae_pretrain_vit_base.pth") && check.line.contains("8cad7c"),
        "{}",
        check.line
    );
    let other = d.join("other.bin");
    std::fs::write(&other, b"abc").unwrap();
    let check = mae::interop::detect::verify_md5(&other).unwrap();
    assert!(!check.mismatch);
    assert!(check.line.contains("not one of the official checkpoints"));
}
