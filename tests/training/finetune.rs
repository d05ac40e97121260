//! `mae finetune` end to end on a small ImageFolder: checkpoints and log.txt every epoch,
//! `Max accuracy`, resume (2 epochs == 1 + --resume + 1, bit for bit), `--eval --resume`, and a
//! pre-trained checkpoint of another architecture refused with the mismatched keys listed.

use crate::common::{self, argv};

use std::path::{Path, PathBuf};

use tch::Tensor;

/// DIR/data/{train,val}/{a,b}/*.png, 12 images a class in train.
fn image_folder(dir: &Path) -> PathBuf {
    let data = dir.join("data");
    common::two_class_images(&data, 12);
    data
}

/// `mae args…`: whether it succeeded, and its stdout and stderr.
fn mae(args: &[String]) -> (bool, String) {
    let out = common::mae_output(args);
    (out.status.success(), common::output_text(&out))
}

/// `mae finetune` of the tiny ViT on `data` into `out`, with the flags `extra`; its output.
fn finetune(data: &Path, out: &Path, extra: Vec<String>) -> String {
    let mut args = argv!(
        "finetune --model vit_tiny_patch4 --input_size 32 --nb_classes 2 --batch_size 4 \
         --warmup_epochs 1 --aa none --device cpu --num_workers 2 --data_path {} --output_dir {}",
        data.display(),
        out.display()
    );
    args.extend(extra);
    let (ok, text) = mae(&args);
    assert!(ok, "mae {args:?} failed:\n{text}");
    text
}

/// DIR/mae_tiny.pth: a mae_vit_tiny_patch4 pre-training checkpoint (encoder + decoder, official
/// keys), freshly initialised.
fn mae_tiny_checkpoint(dir: &Path) -> PathBuf {
    let path = dir.join("mae_tiny.pth");
    tch::manual_seed(0);
    let vs = tch::nn::VarStore::new(tch::Device::Cpu);
    let cfg = mae::models_mae::MaeConfig::default();
    let _m = mae::models_mae::build("mae_vit_tiny_patch4", &vs.root(), cfg).unwrap();
    let sd = mae::torch::optim::named_parameters(&vs);
    mae::torch::serialization::save_state_dict(&path, &sd).unwrap();
    path
}

fn model_of(path: &Path) -> Vec<(String, Tensor)> {
    mae::torch::serialization::load_state_dict(path).unwrap()
}

#[test]
fn train_log_checkpoints_resume_and_eval() {
    let dir = common::scratch();
    let data = image_folder(&dir);
    let (full, first) = (dir.join("full"), dir.join("first"));

    // mixup + cutmix + label smoothing + random erasing + clipping + drop path all on
    let recipe = "--mixup 0.8 --cutmix 1.0 --clip_grad 1.0";
    let text = finetune(&data, &full, argv!(&format!("--epochs 2 {recipe}")));
    assert!(text.contains("Mixup is activated!"));
    assert!(text.contains("criterion = SoftTargetCrossEntropy()"));
    assert!(text.contains("* Acc@1 ") && text.contains("Max accuracy: "));
    let log = std::fs::read_to_string(full.join("log.txt")).unwrap();
    assert_eq!(log.lines().count(), 2);
    for (epoch, line) in log.lines().enumerate() {
        let v: serde_json::Value = serde_json::from_str(line).unwrap();
        let keys: Vec<&String> = v.as_object().unwrap().keys().collect();
        assert_eq!(keys.len(), 7, "{line}");
        assert_eq!(v["epoch"].as_i64().unwrap(), epoch as i64);
        assert!(v["train_loss"].as_f64().unwrap().is_finite());
        assert!(v["test_acc1"].as_f64().is_some() && v["n_parameters"].as_i64().is_some());
    }

    // 1 epoch, then --resume for the second: the same weights as 2 epochs straight
    finetune(&data, &first, argv!(&format!("--epochs 1 {recipe}")));
    let resume = format!("--epochs 2 --resume {{}} {recipe}");
    let ckpt0 = first.join("checkpoint-0.pth");
    let text = finetune(&data, &first, argv!(&resume, ckpt0.display()));
    assert!(text.contains("With optim & sched!"));
    let a = model_of(&full.join("checkpoint-1.pth"));
    let b = model_of(&first.join("checkpoint-1.pth"));
    assert_eq!(a.len(), b.len());
    for ((ka, ta), (kb, tb)) in a.iter().zip(&b) {
        assert_eq!(ka, kb);
        assert!(ta.equal(tb), "{ka} differs after resume");
    }

    // --eval --resume: evaluation only
    let ckpt1 = full.join("checkpoint-1.pth");
    let text = finetune(
        &data,
        &dir.join("eval"),
        argv!("--eval --resume {}", ckpt1.display()),
    );
    assert!(text.contains("Accuracy of the network on the 8 test images"));
    assert!(!text.contains("Start training"));
}

#[test]
fn pretrained_checkpoint_of_another_architecture_is_refused() {
    let dir = common::scratch();
    let data = image_folder(&dir);
    // a mae_vit_tiny_patch4-shaped encoder whose blocks are 32-d instead of 64-d
    let sd: Vec<(String, Tensor)> = {
        let vs = tch::nn::VarStore::new(tch::Device::Cpu);
        let cfg = mae::models_vit::VitConfig {
            img_size: 32,
            patch_size: 4,
            embed_dim: 32,
            depth: 2,
            num_heads: 4,
            num_classes: 0,
            ..Default::default()
        };
        let _m = mae::models_vit::VisionTransformer::new(&vs.root(), &cfg);
        mae::torch::optim::named_parameters(&vs)
    };
    let path = dir.join("wrong.pth");
    mae::torch::serialization::save_state_dict(&path, &sd).unwrap();
    #[rustfmt::skip]
    let args = argv!(
        "finetune --model vit_tiny_patch4 --input_size 32 --nb_classes 2 --batch_size 4 \
         --epochs 1 --device cpu --aa none --data_path {} --output_dir {} --finetune {}",
        data.display(), "", path.display()
    );
    let (ok, text) = mae(&args);
    assert!(!ok);
    assert!(text.contains("size mismatch for cls_token"), "{text}");
    assert!(text.contains("blocks.0.attn.qkv.weight"), "{text}");
}

#[test]
fn linprobe_from_an_mae_checkpoint_with_either_pooling() {
    let dir = common::scratch();
    let data = image_folder(&dir);
    let path = mae_tiny_checkpoint(&dir);
    for pool in ["--cls_token", "--global_pool"] {
        let out = dir.join(format!("linprobe{pool}"));
        #[rustfmt::skip]
        let args = argv!(
            "linprobe --model vit_tiny_patch4 --input_size 32 --nb_classes 2 --batch_size 8 \
             --epochs 2 --warmup_epochs 1 --device cpu --data_path {} --output_dir {} \
             --finetune {} {}",
            data.display(), out.display(), path.display(), pool
        );
        let (ok, text) = mae(&args);
        assert!(ok, "mae {args:?} failed:\n{text}");
        let fc_norm_missing = text.contains("missing_keys=[\"fc_norm.bias\"");
        assert_eq!(fc_norm_missing, pool == "--global_pool", "{text}");
        assert!(text.contains("LARS (") && text.contains("Max accuracy: "));
        let log = std::fs::read_to_string(out.join("log.txt")).unwrap();
        let last: serde_json::Value = serde_json::from_str(log.lines().last().unwrap()).unwrap();
        // only the Linear head trains: 64 × 2 + 2
        assert_eq!(last["n_parameters"].as_i64(), Some(130));
        let ckpt = out.join("checkpoint-1.pth");
        let sd = model_of(&ckpt);
        let keys: Vec<&str> = sd.iter().map(|(k, _)| k.as_str()).collect();
        for k in [
            "head.0.running_mean",
            "head.0.running_var",
            "head.0.num_batches_tracked",
            "head.1.weight",
        ] {
            assert!(keys.contains(&k), "{k} not in {keys:?}");
        }
        // the encoder stayed as loaded
        let loaded = model_of(&path);
        let before = &loaded
            .iter()
            .find(|(k, _)| k == "blocks.0.attn.qkv.weight")
            .unwrap()
            .1;
        let after = &sd
            .iter()
            .find(|(k, _)| k == "blocks.0.attn.qkv.weight")
            .unwrap()
            .1;
        assert!(before.equal(after), "the encoder moved");
    }
}

/// `--partial_blocks K` (the paper's Figure 9): from an MAE checkpoint, only the last K blocks,
/// the final norm (fc_norm with the default global pool) and the head train; every other weight
/// leaves the run exactly as it was loaded. K = 0 trains the norm and the head only.
#[test]
fn partial_blocks_train_only_the_last_blocks_the_norm_and_the_head() {
    let dir = common::scratch();
    let data = image_folder(&dir);
    let path = mae_tiny_checkpoint(&dir);
    let loaded = model_of(&path);
    // vit_tiny_patch4: 2 blocks of 64-d; fc_norm 2 × 64, head 64 × 2 + 2
    for (k, trained_blocks, n_trainable) in [(0usize, 0usize, 258i64), (1, 1, 258 + 49_984)] {
        let out = dir.join(format!("partial{k}"));
        let flags = argv!(
            "--epochs 1 --partial_blocks {} --finetune {}",
            k,
            path.display()
        );
        let text = finetune(&data, &out, flags);
        assert!(
            text.contains(&format!("partial fine-tuning: the last {k} of 2 blocks")),
            "{text}"
        );
        let log = std::fs::read_to_string(out.join("log.txt")).unwrap();
        let v: serde_json::Value = serde_json::from_str(log.lines().last().unwrap()).unwrap();
        assert_eq!(v["n_parameters"].as_i64(), Some(n_trainable), "K = {k}");
        let sd = model_of(&out.join("checkpoint-0.pth"));
        let mut moved = Vec::new();
        for (name, after) in &sd {
            let trained = match name.strip_prefix("blocks.") {
                Some(rest) => rest.starts_with('1') && trained_blocks == 1,
                None => name.starts_with("fc_norm.") || name.starts_with("head."),
            };
            let before = loaded.iter().find(|(n, _)| n == name).map(|(_, t)| t);
            match (trained, before) {
                (false, Some(before)) => assert!(before.equal(after), "K = {k}: {name} moved"),
                (false, None) => panic!("K = {k}: {name} is neither loaded nor trained"),
                (true, Some(before)) => {
                    if !before.equal(after) {
                        moved.push(name.clone());
                    }
                }
                (true, None) => moved.push(name.clone()), // the new head and fc_norm
            }
        }
        assert!(
            moved.iter().any(|n| n == "head.weight"),
            "K = {k}: {moved:?}"
        );
        if trained_blocks == 1 {
            assert!(
                moved.iter().any(|n| n == "blocks.1.attn.qkv.weight"),
                "{moved:?}"
            );
        }
    }
}
