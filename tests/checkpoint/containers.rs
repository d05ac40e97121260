//! The checkpoint containers people hold, written by torch.save: timm's `load_checkpoint`
//! accepts `model`, `state_dict`, `state_dict_ema`, `model_ema` or a bare state dict, and its
//! `clean_state_dict` strips `module.` (DDP) and `_orig_mod.` (torch.compile). `mae inspect`
//! says which entry it used and what it stripped; the tensors are the original ones.
use crate::common::{self, argv};
use std::path::Path;

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

/// Every container of CONTAINERS as DIR/STEM.pth.
fn write_containers(dir: &Path) {
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
    let pretrained = common::root().join(PRETRAINED);
    common::run_python_code(&code, &[common::s(&pretrained), common::s(dir)]);
}

#[test]
fn inspect_reports_the_entry_and_the_stripped_prefixes() {
    let dir = common::scratch();
    write_containers(&dir);
    for (stem, _, source) in CONTAINERS {
        let text = common::mae_ok(argv!(
            "inspect {}",
            dir.join(format!("{stem}.pth")).display()
        ));
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
    let dir = common::scratch();
    write_containers(&dir);
    let original =
        mae::torch::serialization::load_state_dict(&common::root().join(PRETRAINED)).unwrap();
    for (stem, ..) in CONTAINERS {
        let sd =
            mae::torch::serialization::load_state_dict(&dir.join(format!("{stem}.pth"))).unwrap();
        common::assert_same_tensors(&sd, &original, stem);
    }
}

/// A dict with no state dict in it names the entries it looked for.
#[test]
fn no_state_dict_names_the_entries_looked_for() {
    let dir = common::scratch();
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
    let dir = common::scratch();
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
