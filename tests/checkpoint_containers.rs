//! The checkpoint containers people hold, written by torch.save: timm's `load_checkpoint`
//! accepts `model`, `state_dict`, `state_dict_ema`, `model_ema` or a bare state dict, and its
//! `clean_state_dict` strips `module.` (DDP) and `_orig_mod.` (torch.compile). `mae inspect`
//! says which entry it used and what it stripped; the tensors are the original ones.
mod common;
use std::path::{Path, PathBuf};

const PRETRAINED: &str = "weights/mae_pretrain_fmnist_mini_patch4.pth";

/// Each container (file stem, Python expression of what torch.save writes; `sd` is the state
/// dict of PRETRAINED), with the entry and the stripped prefixes inspect must report.
const CONTAINERS: &[(&str, &str, &str)] = &[
    ("model", "{'model': sd}", "checkpoint['model']"),
    ("state_dict", "{'state_dict': sd, 'epoch': 3}", "checkpoint['state_dict']"),
    (
        "ema",
        "{'state_dict': junk, 'state_dict_ema': sd}",
        "checkpoint['state_dict_ema']",
    ),
    (
        "ema_none",
        "{'state_dict_ema': None, 'state_dict': sd}",
        "checkpoint['state_dict']",
    ),
    ("model_ema", "{'model_ema': sd, 'model': junk}", "checkpoint['model_ema']"),
    ("bare", "sd", "the top level"),
    (
        "ddp",
        "{'model': OrderedDict(('module.' + k, v) for k, v in sd.items())}",
        "checkpoint['model'], `module.` prefix stripped from 134 keys",
    ),
    (
        "ddp_bare",
        "OrderedDict(('module.' + k, v) for k, v in sd.items())",
        "the top level, `module.` prefix stripped from 134 keys",
    ),
    (
        "compiled_ddp",
        "{'state_dict': OrderedDict(('_orig_mod.module.' + k, v) for k, v in sd.items())}",
        "checkpoint['state_dict'], `_orig_mod.` prefix stripped from 134 keys, `module.` prefix stripped from 134 keys",
    ),
];

fn write_containers() -> PathBuf {
    static DIR: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();
    DIR.get_or_init(|| {
        let dir = common::scratch("checkpoint_containers");
        let cases: Vec<String> = CONTAINERS
            .iter()
            .map(|(stem, expr, _)| format!("({stem:?}, lambda: {expr})"))
            .collect();
        let code = format!(
            "import sys, torch\nfrom collections import OrderedDict\n\
             sd = torch.load(sys.argv[1], weights_only=True)['model']\n\
             junk = {{'head.weight': torch.zeros(2, 2)}}\n\
             for stem, make in [{}]:\n    torch.save(make(), sys.argv[2] + '/' + stem + '.pth')\n",
            cases.join(", ")
        );
        common::run_python_code(
            &code,
            &[
                common::root().join(PRETRAINED).to_str().unwrap(),
                dir.to_str().unwrap(),
            ],
        );
        dir
    })
    .clone()
}

fn inspect(path: &Path) -> String {
    let out = common::mae_command(&["inspect"])
        .arg(path)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "mae inspect {}: {}\n{text}",
        path.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    text
}

#[test]
fn inspect_reports_the_entry_and_the_stripped_prefixes() {
    let dir = write_containers();
    for (stem, _, source) in CONTAINERS {
        let text = inspect(&dir.join(format!("{stem}.pth")));
        let want = format!("state_dict ({source}): 134 tensors");
        assert!(text.contains(&want), "{stem}: wanted {want:?} in\n{text}");
        assert!(
            text.contains("model: mae_vit_mini_patch4: MAE pre-training model"),
            "{stem}: the model is not detected:\n{text}"
        );
    }
}

#[test]
fn every_container_gives_the_original_tensors() {
    let dir = write_containers();
    let original =
        mae::torch::serialization::load_state_dict(&common::root().join(PRETRAINED)).unwrap();
    for (stem, ..) in CONTAINERS {
        let sd =
            mae::torch::serialization::load_state_dict(&dir.join(format!("{stem}.pth"))).unwrap();
        assert_eq!(sd.len(), original.len(), "{stem}");
        for ((k, t), (k0, t0)) in sd.iter().zip(&original) {
            assert_eq!(k, k0, "{stem}");
            assert!(t.equal(t0), "{stem}: {k} differs");
        }
    }
}

/// A dict with no state dict in it names the entries it looked for.
#[test]
fn no_state_dict_names_the_entries_looked_for() {
    let dir = common::scratch("checkpoint_containers_bad");
    let path = dir.join("optimizer_only.pth");
    common::run_python_code(
        "import sys, torch; torch.save({'optimizer': {'lr': 0.1}, 'epoch': torch.tensor(1)}, sys.argv[1])",
        &[path.to_str().unwrap()],
    );
    let err = mae::torch::serialization::load_state_dict(&path).unwrap_err();
    let msg = format!("{err:#}");
    assert!(
        msg.contains("no 'state_dict_ema', 'model_ema', 'state_dict', 'model' entry holds one"),
        "{msg}"
    );
}

/// Two keys that become one once `module.` is stripped are refused, not silently merged.
#[test]
fn keys_colliding_after_stripping_are_refused() {
    let dir = common::scratch("checkpoint_containers_bad");
    let path = dir.join("collide.pth");
    common::run_python_code(
        "import sys, torch; torch.save({'module.w': torch.ones(1), 'w': torch.zeros(1)}, sys.argv[1])",
        &[path.to_str().unwrap()],
    );
    let err = mae::torch::serialization::load_state_dict(&path).unwrap_err();
    assert!(
        format!("{err:#}").contains("key w appears twice"),
        "{err:#}"
    );
}
