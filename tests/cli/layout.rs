//! The layout of src/ that docs/ARCHITECTURE.md describes: `ls src/util` is the official `ls util`,
//! no module imports a module that imports it back, and the folders that stand in for libraries
//! (util/, timm/, torchvision/, torch/, cli/) import no model, engine or entry point; torch/
//! imports nothing of util/, interop/, cli/ or eval/.
use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

/// Module path (`torch::serialization`) → its source, for every file under src/ but the crate
/// roots; `#[cfg(test)]` modules are left out.
fn modules() -> BTreeMap<String, String> {
    fn walk(dir: &Path, src: &Path, out: &mut BTreeMap<String, String>) {
        for e in std::fs::read_dir(dir).expect("src/ is readable") {
            let p = e.expect("an entry").path();
            if p.is_dir() {
                walk(&p, src, out);
            } else if p.extension().is_some_and(|x| x == "rs") {
                let rel = p.strip_prefix(src).expect("under src/").with_extension("");
                let name = rel.to_string_lossy().replace("/mod", "").replace('/', "::");
                if name != "lib" && name != "main" {
                    let text = std::fs::read_to_string(&p).expect("a source file");
                    let code = text.split("#[cfg(test)]").next().unwrap_or("").to_string();
                    out.insert(name, code);
                }
            }
        }
    }
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut out = BTreeMap::new();
    walk(&src, &src, &mut out);
    out
}

/// For each module, the other modules it names (`crate::a::b::c` resolves to the longest module
/// prefix; `super::x` to the sibling).
fn imports(mods: &BTreeMap<String, String>) -> BTreeMap<String, BTreeSet<String>> {
    let resolve = |path: &str| {
        let parts: Vec<&str> = path.split("::").collect();
        (1..=parts.len())
            .rev()
            .map(|k| parts[..k].join("::"))
            .find(|m| mods.contains_key(m))
    };
    let ident = |s: &str| -> String {
        s.chars()
            .take_while(|c| c.is_ascii_alphanumeric() || *c == '_' || *c == ':')
            .collect::<String>()
            .trim_end_matches(':')
            .to_string()
    };
    let mut out = BTreeMap::new();
    for (m, code) in mods {
        let mut to = BTreeSet::new();
        for (i, _) in code.match_indices("crate::") {
            if let Some(t) = resolve(&ident(&code[i + 7..])) {
                to.insert(t);
            }
        }
        let parent = m.rsplit_once("::").map_or("", |(p, _)| p);
        for (i, _) in code.match_indices("super::") {
            let rest = ident(&code[i + 7..]);
            let path = if parent.is_empty() {
                rest
            } else {
                format!("{parent}::{rest}")
            };
            if let Some(t) = resolve(&path) {
                to.insert(t);
            }
        }
        to.retain(|t| {
            t != m && !t.starts_with(&format!("{m}::")) && !m.starts_with(&format!("{t}::"))
        });
        out.insert(m.clone(), to);
    }
    out
}

#[test]
fn util_holds_the_official_util_files_only() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("src/util");
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .expect("src/util")
        .map(|e| {
            e.expect("an entry")
                .file_name()
                .to_string_lossy()
                .into_owned()
        })
        .collect();
    names.sort();
    let official = [
        "crop",
        "datasets",
        "lars",
        "lr_decay",
        "lr_sched",
        "misc",
        "pos_embed",
    ];
    let mut want: Vec<String> = official.iter().map(|n| format!("{n}.rs")).collect();
    want.push("mod.rs".into());
    want.sort();
    assert_eq!(names, want);
}

#[test]
fn no_module_imports_one_that_imports_it_back() {
    let graph = imports(&modules());
    // a cycle exists iff some module reaches itself
    for start in graph.keys() {
        let (mut stack, mut seen) = (vec![(start.clone(), vec![start.clone()])], BTreeSet::new());
        while let Some((m, path)) = stack.pop() {
            for t in &graph[&m] {
                assert!(t != start, "import cycle: {} -> {start}", path.join(" -> "));
                if seen.insert(t.clone()) {
                    let mut p = path.clone();
                    p.push(t.clone());
                    stack.push((t.clone(), p));
                }
            }
        }
    }
}

#[test]
fn library_folders_import_no_model_engine_or_entry_point() {
    let graph = imports(&modules());
    let top = |m: &str| m.split("::").next().unwrap_or("").to_string();
    let upper = |t: &str| {
        let t = top(t);
        t.starts_with("models_")
            || t.starts_with("engine_")
            || t.starts_with("main_")
            || ["mae_visualize", "interop", "eval"].contains(&t.as_str())
    };
    for (m, to) in &graph {
        let folder = top(m);
        if ["util", "timm", "torchvision", "torch", "cli"].contains(&folder.as_str()) {
            let bad: Vec<&String> = to.iter().filter(|t| upper(t)).collect();
            assert!(bad.is_empty(), "{m} imports {bad:?}");
        }
        if folder == "torch" {
            let bad: Vec<&String> = to
                .iter()
                .filter(|t| ["util", "cli"].contains(&top(t).as_str()) || upper(t))
                .collect();
            assert!(bad.is_empty(), "{m} imports {bad:?}");
        }
    }
    // the entry points import no other entry point
    let entry = |t: &str| {
        t.starts_with("main_")
            || t == "mae_visualize"
            || t == "interop::inspect"
            || t == "interop::convert"
            || t == "eval::predict"
    };
    for (m, to) in &graph {
        if entry(m) {
            let bad: Vec<&String> = to.iter().filter(|t| entry(t)).collect();
            assert!(bad.is_empty(), "entry point {m} imports {bad:?}");
        }
    }
}
