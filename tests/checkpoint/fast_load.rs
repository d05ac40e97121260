//! The fast load path: memory-mapped checkpoints copied into their tensors in parallel chunks
//! (src/torch/serialization), and models built without random init for a full checkpoint
//! (`init: false`). No Python needed: the files are written by the crate's own writer, whose
//! output PyTorch reads back in serialization.rs.
use crate::common;

use crate::common::bytes_of;
use mae::models_mae::{self, MaeConfig};
use mae::models_vit::{self, VitConfig};
use mae::torch::serialization;
use tch::{nn, Device, Kind, Tensor};

/// Storages of several chunks (the copy works in 4 MiB pieces) and odd sizes, every dtype
/// family; a view sharing its storage.
fn state_dict() -> Vec<(String, Tensor)> {
    let big = Tensor::randn([3 << 20], (Kind::Float, Device::Cpu)); // 12 MiB: 3 chunks
    vec![
        ("big".into(), big.shallow_clone()),
        ("big_view".into(), big.narrow(0, 5, 1000)),
        (
            "odd_bf16".into(),
            Tensor::randn([1_234_567], (Kind::Float, Device::Cpu)).to_kind(Kind::BFloat16),
        ),
        (
            "mask".into(),
            Tensor::randn([4099], (Kind::Float, Device::Cpu)).gt(0.),
        ),
        (
            "ids".into(),
            Tensor::arange(9 << 20 >> 3, (Kind::Int64, Device::Cpu)),
        ),
        (
            "empty".into(),
            Tensor::zeros([0, 7], (Kind::Float, Device::Cpu)),
        ),
    ]
}

#[test]
fn multi_chunk_storages_load_bit_exact() {
    let dir = common::scratch();
    let sd = state_dict();
    let pth = dir.join("sd.pth");
    serialization::save_state_dict(&pth, &sd).unwrap();
    common::assert_same_tensors(&sd, &serialization::load_state_dict(&pth).unwrap(), "pth");
    let st = dir.join("sd.safetensors");
    let contiguous: Vec<_> = sd.iter().map(|(k, t)| (k.clone(), t.copy())).collect();
    serialization::save_safetensors(&st, &contiguous).unwrap();
    common::assert_same_tensors(
        &contiguous,
        &serialization::load_state_dict(&st).unwrap(),
        "safetensors",
    );
    // Copy-on-write views of the file, bit for bit the same.
    let mapped = serialization::load_state_dict_mapped(&pth).unwrap();
    common::assert_same_tensors(&sd, &mapped, "mapped");
    common::assert_same_tensors(
        &contiguous,
        &serialization::load_state_dict_mapped(&st).unwrap(),
        "mapped safetensors",
    );
    // Neither owned nor mapped tensors write back: the file is unchanged after writing to them.
    let loaded = serialization::load_state_dict(&pth).unwrap();
    let _ = loaded[0].1.shallow_clone().fill_(0.);
    let _ = mapped[0].1.shallow_clone().fill_(0.);
    let _ = mapped[1].1.shallow_clone().fill_(1.);
    common::assert_same_tensors(
        &sd,
        &serialization::load_state_dict(&pth).unwrap(),
        "reload",
    );
}

#[test]
fn corrupt_and_truncated_storages_are_refused() {
    let dir = common::scratch();
    let pth = dir.join("sd.pth");
    serialization::save_state_dict(&pth, &state_dict()).unwrap();
    let good = std::fs::read(&pth).unwrap();
    // One flipped bit in the first, a middle and the last chunk of the 12 MiB storage (it
    // starts in the first KiB of the file), and one near the end of the last storage.
    for at in [2048, 6 << 20, (12 << 20) - 10, good.len() / 2] {
        let mut bad = good.clone();
        bad[at] ^= 0x10;
        let path = dir.join(format!("flipped_{at}.pth"));
        std::fs::write(&path, &bad).unwrap();
        for load in [serialization::load, serialization::load_mapped] {
            let err = format!("{:#}", load(&path).unwrap_err());
            assert!(err.contains(&path.display().to_string()), "{err}");
            assert!(err.contains("CRC-32 mismatch"), "{err}");
        }
    }
    for cut in [good.len() / 3, good.len() - 100] {
        let path = dir.join(format!("cut_{cut}.pth"));
        std::fs::write(&path, &good[..cut]).unwrap();
        for load in [serialization::load, serialization::load_mapped] {
            let err = format!("{:#}", load(&path).unwrap_err());
            assert!(err.contains(&path.display().to_string()), "{err}");
        }
    }
}

/// Outputs and parameters of `init` + load and of no-init + load, bit for bit.
#[test]
fn no_init_build_then_load_equals_init_then_load() {
    let dir = common::scratch();
    let x = Tensor::randn([2, 3, 32, 32], (Kind::Float, Device::Cpu));

    // models_vit: a "fine-tuned" checkpoint with random weights
    let vit = |init: bool| VitConfig {
        img_size: 32,
        num_classes: 10,
        init,
        ..VitConfig::default()
    };
    let src = nn::VarStore::new(Device::Cpu);
    models_vit::build("vit_tiny_patch4", &src.root(), vit(true)).unwrap();
    let pth = dir.join("vit.pth");
    let sd: Vec<(String, Tensor)> = src.variables().into_iter().collect();
    serialization::save_state_dict(&pth, &sd).unwrap();
    let mut outs = vec![];
    for init in [true, false] {
        let mut vs = nn::VarStore::new(Device::Cpu);
        let model = models_vit::build("vit_tiny_patch4", &vs.root(), vit(init)).unwrap();
        let sd = match init {
            true => serialization::load_state_dict(&pth).unwrap(),
            false => serialization::load_state_dict_mapped(&pth).unwrap(), // as mae eval
        };
        model.load_checkpoint(&mut vs, sd).unwrap();
        let mut vars: Vec<_> = vs.variables().into_iter().collect();
        vars.sort_by(|a, b| a.0.cmp(&b.0));
        outs.push((model.forward_t(&x, false).unwrap(), vars));
    }
    assert!(
        bytes_of(&outs[0].0) == bytes_of(&outs[1].0),
        "vit logits differ"
    );
    common::assert_same_tensors(&outs[0].1, &outs[1].1, "vit parameters");

    // models_mae
    let mae = |init: bool| MaeConfig {
        init,
        ..MaeConfig::default()
    };
    let src = nn::VarStore::new(Device::Cpu);
    models_mae::build("mae_vit_tiny_patch4", &src.root(), mae(true)).unwrap();
    let pth = dir.join("mae.pth");
    let sd: Vec<(String, Tensor)> = src.variables().into_iter().collect();
    serialization::save_state_dict(&pth, &sd).unwrap();
    let noise = Tensor::rand([2, 64], (Kind::Float, Device::Cpu));
    let mut outs = vec![];
    for init in [true, false] {
        let mut vs = nn::VarStore::new(Device::Cpu);
        let model = models_mae::build("mae_vit_tiny_patch4", &vs.root(), mae(init)).unwrap();
        let sd = match init {
            true => serialization::load_state_dict(&pth).unwrap(),
            false => serialization::load_state_dict_mapped(&pth).unwrap(), // as mae visualize
        };
        model.load_checkpoint(&mut vs, sd).unwrap();
        let (loss, pred, _) = model.forward_with_noise(&x, 0.75, Some(&noise)).unwrap();
        outs.push((loss, pred));
    }
    assert!(
        bytes_of(&outs[0].0) == bytes_of(&outs[1].0),
        "mae loss differs"
    );
    assert!(
        bytes_of(&outs[0].1) == bytes_of(&outs[1].1),
        "mae pred differs"
    );

    // A checkpoint that leaves a parameter out is refused, so no unwritten weight is ever used.
    let partial: Vec<_> = sd.into_iter().filter(|(k, _)| k != "norm.weight").collect();
    let mut vs = nn::VarStore::new(Device::Cpu);
    let model = models_mae::build("mae_vit_tiny_patch4", &vs.root(), mae(false)).unwrap();
    let err = format!("{:#}", model.load_checkpoint(&mut vs, partial).unwrap_err());
    assert!(err.contains("norm.weight"), "{err}");
}
