//! The command line keeps the official spellings and defaults
//! (tests/data/reference/official_args.json, read off main_pretrain.py / main_finetune.py /
//! main_linprobe.py): a researcher's command works unchanged with `mae <subcommand>`.
use crate::common;
use std::collections::BTreeMap;

fn official(script: &str) -> serde_json::Map<String, serde_json::Value> {
    let path = common::root().join("tests/data/reference/official_args.json");
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let all: serde_json::Value = serde_json::from_str(&text).unwrap();
    all[script]
        .as_object()
        .unwrap_or_else(|| panic!("{script} missing"))
        .clone()
}

/// `--flag` → default as clap prints it (`None` for flags without a value or default).
fn help_defaults(subcommand: &str) -> BTreeMap<String, Option<String>> {
    let out = common::mae_output([subcommand, "--help"]);
    assert!(out.status.success());
    let text = String::from_utf8_lossy(&out.stdout);
    // clap puts the help (and its `[default: …]`) after the flag, or on the next lines when
    // some flag is long: gather each flag's text up to the next flag
    let mut entries: Vec<(String, String)> = Vec::new();
    for line in text.lines() {
        let line = line.trim_start();
        match line.strip_prefix("--") {
            Some(rest) => {
                let name = rest.split([' ', '\t']).next().unwrap().to_string();
                entries.push((format!("--{name}"), line.to_string()));
            }
            None if line.starts_with('-') => entries.push((String::new(), String::new())),
            None => {
                if let Some(e) = entries.last_mut() {
                    e.1.push(' ');
                    e.1.push_str(line);
                }
            }
        }
    }
    let mut flags = BTreeMap::new();
    for (name, text) in entries.into_iter().filter(|e| !e.0.is_empty()) {
        let default = text.rfind("[default: ").map(|i| {
            text[i + 10..]
                .split(']')
                .next()
                .unwrap()
                .trim_matches('"')
                .to_string()
        });
        flags.insert(name, default);
    }
    flags
}

fn same_default(official: &serde_json::Value, ours: &Option<String>) -> bool {
    match (official, ours) {
        (serde_json::Value::Null, None) | (serde_json::Value::Bool(_), None) => true,
        (serde_json::Value::Number(n), Some(s)) => s.parse::<f64>().ok() == n.as_f64(),
        (serde_json::Value::String(a), Some(b)) => a == b,
        (serde_json::Value::String(a), None) => a.is_empty(),
        _ => false,
    }
}

/// Every official flag of `script` is accepted by `mae subcommand` with the official default
/// (`derived` flags: present, their default read off the checkpoint / the machine).
fn check_with(script: &str, subcommand: &str, not_yet: &[&str], derived: &[&str]) {
    let ours = help_defaults(subcommand);
    let mut problems = Vec::new();
    for (dest, spec) in official(script) {
        for flag in spec["flags"].as_array().unwrap() {
            let flag = flag.as_str().unwrap();
            if not_yet.contains(&flag) {
                continue;
            }
            match ours.get(flag) {
                None => problems.push(format!("{flag} (dest {dest}) is missing")),
                Some(_) if derived.contains(&flag) => {}
                Some(d) if flag.starts_with("--no_") || flag == "--cls_token" => {
                    if d.is_some() {
                        problems.push(format!("{flag} takes no value"))
                    }
                }
                Some(d) if !same_default(&spec["default"], d) => problems.push(format!(
                    "{flag}: default {d:?}, official {}",
                    spec["default"]
                )),
                Some(_) => {}
            }
        }
    }
    assert!(
        problems.is_empty(),
        "mae {subcommand} vs {script}.py:\n  {}",
        problems.join("\n  ")
    );
}

#[test]
fn pretrain_flags_are_the_official_ones() {
    // --device: cuda when available, as finetune and linprobe
    check_with("main_pretrain", "pretrain", &[], &["--device"]);
}

#[test]
fn finetune_flags_are_the_official_ones() {
    check_with(
        "main_finetune",
        "finetune",
        &[],
        &["--model", "--nb_classes", "--device"],
    );
}

#[test]
fn linprobe_flags_are_the_official_ones() {
    check_with("main_linprobe", "linprobe", &[], &["--device"]);
}

#[test]
fn eval_flags_are_official_finetune_flags() {
    // `mae eval` is `main_finetune.py --eval`: every flag it has is an official one with the
    // official default; the training-only flags arrive with `mae finetune`.
    let ours = help_defaults("eval");
    let official = official("main_finetune");
    let official_flags: BTreeMap<String, &serde_json::Value> = official
        .values()
        .flat_map(|spec| {
            spec["flags"]
                .as_array()
                .unwrap()
                .iter()
                .map(move |f| (f.as_str().unwrap().to_string(), &spec["default"]))
        })
        .collect();
    // Not in main_finetune.py: outputs and numerics options of the port.
    let extras = [
        "--help",
        "--output_json",
        "--save_logits",
        "--pillow",
        "--precision",
        "--dataset",
        "--train_subset",
        // partial fine-tuning (the paper's Figure 9) and torch's fused AdamW, training flags of
        // the shared parser
        "--partial_blocks",
        "--fused_optimizer",
        // the robustness protocols (docs/EVALUATION.md)
        "--class_subset",
        "--imagenet_c",
        "--json",
        // data-parallel options the official hard-codes (nccl, torch's 30 min timeout)
        "--dist_backend",
        "--dist_timeout",
    ];
    // Defaults read off the checkpoint / the machine instead of fixed values; documented in --help.
    let derived = ["--model", "--nb_classes", "--device"];
    // Official flags sharing a dest with another (the reference file keeps one flag per dest).
    let paired = ["--global_pool", "--pin_mem"];
    for (flag, default) in &ours {
        if extras.contains(&flag.as_str()) || paired.contains(&flag.as_str()) {
            continue;
        }
        if derived.contains(&flag.as_str()) {
            assert!(
                default.is_some(),
                "{flag}: the derived default is not documented in --help"
            );
            continue;
        }
        let Some(official_default) = official_flags.get(flag) else {
            panic!(
                "mae eval {flag} is not a main_finetune.py flag (add it to the documented extras)"
            )
        };
        if flag.starts_with("--no_") || flag == "--cls_token" || flag == "--global_pool" {
            continue;
        }
        assert!(
            same_default(official_default, default),
            "{flag}: default {default:?}, official {official_default}"
        );
    }
    for needed in [
        "--resume",
        "--model",
        "--data_path",
        "--batch_size",
        "--input_size",
        "--nb_classes",
        "--global_pool",
        "--cls_token",
        "--device",
    ] {
        assert!(ours.contains_key(needed), "mae eval lacks {needed}");
    }
}
