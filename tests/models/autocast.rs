//! Mixed precision (src/torch/amp.rs over libtorch's autocast): the guard turns CPU bf16 autocast on
//! and restores the previous state; ViT logits in bf16 against our fp32 and against PyTorch's own
//! `torch.autocast('cpu', dtype=torch.bfloat16)` on the same timm model, weights and input
//! (tools/reference/amp_reference.py on the parity fixtures); `mae eval` /
//! `mae visualize --precision bf16` against fp32.

use crate::common;

use crate::common::{
    argv, big_model_lock, check, load_io, parity_fixtures, rel_err, vit_checkpoint,
};
use mae::models_vit::{self, VitConfig};
use mae::torch::amp::{self, Precision};
use tch::{nn, Device, Kind, Tensor};

const CPU: Device = Device::Cpu;

fn mm_kind() -> Kind {
    let a = Tensor::ones([4, 4], (Kind::Float, CPU));
    a.matmul(&a).kind()
}

#[test]
fn guard_turns_cpu_autocast_on_and_restores() {
    let prev_dtype = amp::dtype(CPU);
    assert!(!amp::is_enabled(CPU));
    assert_eq!(mm_kind(), Kind::Float);
    {
        let _g = amp::autocast(CPU, Precision::Bf16);
        assert!(amp::is_enabled(CPU));
        assert_eq!(amp::dtype(CPU), Kind::BFloat16);
        assert_eq!(mm_kind(), Kind::BFloat16);
        // ops off libtorch's lower-precision list are not cast: float64 stays float64
        let d = Tensor::ones([4, 4], (Kind::Double, CPU));
        assert_eq!((&d + &d).kind(), Kind::Double);
        {
            // nested fp32: autocast off inside, as torch.autocast(enabled=False)
            let _off = amp::autocast(CPU, Precision::Fp32);
            assert!(!amp::is_enabled(CPU));
            assert_eq!(mm_kind(), Kind::Float);
        }
        assert!(amp::is_enabled(CPU));
        assert_eq!(mm_kind(), Kind::BFloat16);
        // the CUDA flag is separate
        assert!(!amp::is_enabled(Device::Cuda(0)));
    }
    assert!(!amp::is_enabled(CPU));
    assert_eq!(amp::dtype(CPU), prev_dtype);
    assert_eq!(mm_kind(), Kind::Float);
}

#[test]
fn autocast_is_per_thread() {
    let _g = amp::autocast(CPU, Precision::Bf16);
    assert_eq!(mm_kind(), Kind::BFloat16);
    let other = std::thread::spawn(mm_kind).join().unwrap();
    assert_eq!(other, Kind::Float);
}

/// Our logits in fp32 and under the bf16 guard, and PyTorch's in fp32 and under CPU bf16
/// autocast, for the fixture checkpoint TAG; returns (bf16 vs fp32, ours vs torch in bf16).
fn check_vit(group: &str, name: &str, tag: &str, img: i64, num_classes: i64) -> (f64, f64) {
    let dir = parity_fixtures(group);
    let io = load_io(&dir, &format!("{tag}_io"));
    let scratch = common::scratch();
    let out = scratch.join(format!("{tag}_torch.safetensors"));
    let torch = common::reference_tensors(
        "tools/reference/amp_reference.py",
        &[
            dir.to_str().unwrap(),
            name,
            tag,
            &img.to_string(),
            &num_classes.to_string(),
            "1",
        ],
        &out,
    );

    let mut vs = nn::VarStore::new(CPU);
    let cfg = VitConfig {
        img_size: img,
        num_classes,
        ..VitConfig::default()
    };
    let model = models_vit::build(name, &vs.root(), cfg).unwrap();
    model
        .load_checkpoint(&mut vs, vit_checkpoint(&dir, tag))
        .unwrap();
    let x = &io["imgs"];
    let (fp32, bf16) = tch::no_grad(|| {
        let fp32 = model.forward_t(x, false).unwrap();
        let _g = amp::autocast(CPU, Precision::Bf16);
        (fp32, model.forward_t(x, false).unwrap())
    });
    assert_eq!(fp32.kind(), Kind::Float);
    assert_eq!(bf16.kind(), Kind::BFloat16);
    let bf16 = bf16.to_kind(Kind::Float);

    let e32 = check(&format!("{tag} fp32 vs torch"), &fp32, &torch["fp32"], 1e-5);
    let torch_bf16_vs_fp32 = rel_err(&torch["bf16"], &torch["fp32"]);
    let ours = check(&format!("{tag} bf16 vs fp32"), &bf16, &fp32, 1e-2);
    let vs_torch = check(
        &format!("{tag} bf16 vs torch bf16"),
        &bf16,
        &torch["bf16"],
        1e-3,
    );
    eprintln!(
        "AMP {tag}: fp32 vs torch {e32:.3e}; bf16 vs fp32 {ours:.3e} (torch's own {torch_bf16_vs_fp32:.3e}); \
         bf16 vs torch bf16 {vs_torch:.3e}"
    );
    (ours, vs_torch)
}

#[test]
fn vit_tiny_bf16_vs_fp32_and_torch_autocast() {
    check_vit("tiny", "vit_tiny_patch4", "vit_tiny_patch4", 32, 10);
}

#[test]
fn vit_base_bf16_vs_fp32_and_torch_autocast() {
    let _big = big_model_lock();
    check_vit(
        "vit_base",
        "vit_base_patch16",
        "vit_base_patch16",
        224,
        1000,
    );
}

/// `* Acc@1 A Acc@5 B loss L` as numbers.
fn summary(stdout: &str) -> [f64; 3] {
    let line = common::acc_line(stdout);
    let w: Vec<&str> = line.split_whitespace().collect();
    [w[2], w[4], w[6]].map(|v| v.parse().unwrap())
}

#[test]
fn eval_bf16_accuracy_matches_fp32() {
    let _big = big_model_lock();
    let (dir, ckpt) = common::eval_fixture();
    let run = |precision: &str| {
        let args = argv!(
            "eval --resume {} --data_path {} --batch_size 8 --num_workers 2 --device cpu \
             --precision {}",
            ckpt.display(),
            dir.display(),
            precision
        );
        summary(&common::stdout_ok(
            &common::mae_output(&args),
            &format!("mae eval --precision {precision}"),
        ))
    };
    let (fp32, bf16) = (run("fp32"), run("bf16"));
    eprintln!("AMP eval: fp32 {fp32:?}, bf16 {bf16:?}");
    assert!(
        (fp32[0] - bf16[0]).abs() <= 0.1,
        "Acc@1 {fp32:?} vs {bf16:?}"
    );
    assert!(
        (fp32[1] - bf16[1]).abs() <= 0.1,
        "Acc@5 {fp32:?} vs {bf16:?}"
    );
    assert!(
        (fp32[2] - bf16[2]).abs() <= 1e-2 * fp32[2],
        "loss {fp32:?} vs {bf16:?}"
    );
}

#[test]
fn visualize_bf16_reconstruction_matches_fp32() {
    let dir = parity_fixtures("tiny");
    let scratch = common::scratch();
    let image = common::shared_image("chelsea.png");
    let ckpt = dir.join("mae_vit_tiny_patch4.pth");
    let run = |precision: &str| {
        let (png, st) = (
            scratch.join(format!("{precision}.png")),
            scratch.join(format!("{precision}.safetensors")),
        );
        #[rustfmt::skip]
        let args = argv!(
            "visualize --checkpoint {} --image {} --device cpu --out {} --save_tensors {} \
             --precision {}",
            ckpt.display(), image.display(), png.display(), st.display(), precision
        );
        common::stdout_ok(
            &common::mae_output(&args),
            &format!("mae visualize --precision {precision}"),
        );
        common::read_tensors(&st)
    };
    let (fp32, bf16) = (run("fp32"), run("bf16"));
    assert!(fp32["mask"].equal(&bf16["mask"]), "same seed, same masks");
    assert_eq!(bf16["pred"].kind(), Kind::Float);
    let e = check("visualize pred", &bf16["pred"], &fp32["pred"], 1e-2);
    eprintln!("AMP visualize: pred bf16 vs fp32 {e:.3e}");
}

#[test]
fn fp16_on_cpu_is_refused() {
    for line in ["eval", "visualize --image x.png"] {
        let mut args = argv!(line);
        let cmd = args[0].clone();
        args.extend(argv!("--device cpu --precision fp16"));
        let out = common::mae_output(&args);
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success());
        assert!(
            err.contains("--precision fp16 needs a CUDA device"),
            "mae {cmd}: {err}"
        );
    }
}
