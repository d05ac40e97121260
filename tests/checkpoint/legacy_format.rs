//! The legacy (pre-1.6, non-zip) `torch.save` format (`_use_new_zipfile_serialization=False`),
//! which torch.load(weights_only=True) still reads: the same tensors as the zip format of the
//! same object (fp32, fp16, bf16, float64, int64, bool, a scalar, an empty tensor, a transpose
//! and a slice sharing one storage); an official-format MAE checkpoint saved so is detected by
//! `mae inspect`; cut short anywhere, a file is an error, never a panic.
use crate::common::{self, argv};

use mae::torch::serialization::{self, Value};

const WRITE: &str = r#"
import sys, torch
from collections import OrderedDict
torch.manual_seed(0)
base = torch.randn(6, 5)
sd = OrderedDict([
    ("w", base), ("w_t", base.t()), ("w_slice", base[2:, 1:3]),
    ("h", torch.randn(3, 4).half()), ("b", torch.randn(7).bfloat16()),
    ("i", torch.arange(5)), ("m", torch.tensor([True, False, True])),
    ("d", torch.randn(2, 2).double()), ("s", torch.tensor(3.5)), ("e", torch.zeros(0, 3)),
])
obj = {"model": sd, "epoch": 4, "args": {"lr": 0.1, "name": "x"}}
out = sys.argv[1]
torch.save(obj, out + "/legacy.pth", _use_new_zipfile_serialization=False)
torch.save(obj, out + "/zip.pth")
mae = torch.load(sys.argv[2], weights_only=True)
torch.save(mae, out + "/mae_legacy.pth", _use_new_zipfile_serialization=False)
c = torch.load(out + "/legacy.pth", weights_only=True)
assert torch.equal(c["model"]["w_slice"], base[2:, 1:3])
"#;

/// The files of WRITE in the running test's scratch folder.
fn files() -> common::Scratch {
    let dir = common::scratch();
    let mae = common::root().join("weights/mae_pretrain_fmnist_mini_patch4.pth");
    common::run_python_code(WRITE, &[common::s(&dir), common::s(&mae)]);
    dir
}

#[test]
fn legacy_gives_the_zip_formats_tensors() {
    let dir = files();
    let legacy = serialization::load(&dir.join("legacy.pth")).unwrap();
    let zip = serialization::load(&dir.join("zip.pth")).unwrap();
    assert_eq!(legacy.get("epoch").and_then(Value::as_int), Some(4));
    assert_eq!(
        legacy
            .get("args")
            .and_then(|a| a.get("name"))
            .and_then(Value::as_str),
        Some("x")
    );
    let a = serialization::state_dict(legacy).unwrap();
    let b = serialization::state_dict(zip).unwrap();
    assert_eq!(a.len(), 10);
    for ((ka, ta), (kb, tb)) in a.iter().zip(&b) {
        assert_eq!(ka, kb);
        assert_eq!(ta.kind(), tb.kind(), "{ka}");
        assert_eq!(ta.size(), tb.size(), "{ka}");
        assert_eq!(ta.stride(), tb.stride(), "{ka}");
        assert!(ta.equal(tb), "{ka} differs");
    }
}

#[test]
fn inspect_detects_a_legacy_mae_checkpoint() {
    let dir = files();
    let text = common::mae_ok(argv!("inspect {}", dir.join("mae_legacy.pth").display()));
    assert!(
        text.contains("state_dict (checkpoint['model']): 134 tensors"),
        "{text}"
    );
    assert!(text.contains("model: mae_vit_mini_patch4"), "{text}");
}

#[test]
fn legacy_cut_short_is_an_error() {
    let dir = files();
    let bytes = std::fs::read(dir.join("legacy.pth")).unwrap();
    let cut = dir.join("cut.pth");
    for n in (1..bytes.len()).step_by(7) {
        std::fs::write(&cut, &bytes[..n]).unwrap();
        let err = serialization::load(&cut).expect_err(&format!("{n} bytes load"));
        let msg = format!("{err:#}");
        assert!(msg.contains("cut.pth"), "{n} bytes: {msg}");
    }
    let mut bad = bytes.clone();
    bad[5] ^= 0xff; // inside the magic number
    std::fs::write(&cut, &bad).unwrap();
    let msg = format!("{:#}", serialization::load(&cut).unwrap_err());
    assert!(msg.contains("invalid magic number"), "{msg}");
}
