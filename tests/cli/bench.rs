//! `tools/bench/bench.sh --quick` runs end to end: it exits 0 and its markdown table has
//! every Rust-against-PyTorch row with finite, positive times and ratio, and a section for each of
//! the other drivers (their output, or the marker of a hook still waiting for its script). A
//! benchmark is never a timed test: nothing here asserts a speed.

use crate::common;

use std::process::Command;
use std::time::Instant;

const ROWS: [&str; 6] = [
    "vit_tiny_patch4 eval forward, batch 8, fp32",
    "vit_tiny_patch4 eval forward, batch 8, bf16",
    "mae_vit_tiny_patch4 pre-training step, batch 8, fp32",
    "mae_vit_tiny_patch4 pre-training step, batch 8, bf16",
    "vit_tiny_patch4 fine-tuning step, batch 8, fp32",
    "vit_tiny_patch4 AdamW step alone, fused",
];

#[test]
fn bench_quick_prints_every_row_with_a_finite_ratio() {
    // the PyTorch references: fails (never skips) without tools/setup.sh
    common::python();
    // the eval fixture bench_load.sh reads, written here first: its own writer would race the
    // eval tests running beside this one
    common::eval_fixture();
    let out_dir = common::scratch();
    let t = Instant::now();
    let out = Command::new("bash")
        .arg(common::root().join("tools/bench/bench.sh"))
        .arg("--quick")
        .env("OUT", &*out_dir)
        .current_dir(common::root())
        .output()
        .expect("running tools/bench/bench.sh");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "tools/bench/bench.sh --quick failed ({}):\n{stdout}\n{stderr}",
        out.status
    );
    eprintln!(
        "tools/bench/bench.sh --quick: {:.0} s",
        t.elapsed().as_secs_f64()
    );

    let table = std::fs::read_to_string(out_dir.join("table.md")).expect("table.md");
    assert!(stdout.contains(table.trim()), "the table is printed last");
    for row in ROWS {
        let line = table
            .lines()
            .find(|l| l.starts_with(&format!("| {row} |")))
            .unwrap_or_else(|| panic!("no row {row:?} in\n{table}"));
        // | measurement | rust s/it | pytorch s/it | rust img/s | pytorch img/s | ratio |
        let cells: Vec<&str> = line.split('|').map(str::trim).collect();
        for (i, what) in [(2, "rust s/it"), (3, "pytorch s/it"), (6, "ratio")] {
            let v: f64 = cells[i]
                .parse()
                .unwrap_or_else(|e| panic!("{row}: {what} {:?}: {e}", cells[i]));
            assert!(v.is_finite() && v > 0., "{row}: {what} = {v}");
        }
    }
    for (script, section) in [
        ("bench_data", "data pipeline images/s"),
        ("bench_load", "checkpoint load time"),
    ] {
        let md = std::fs::read_to_string(out_dir.join(format!("{script}.md")))
            .unwrap_or_else(|e| panic!("{script}.md: {e}"));
        assert!(!md.trim().is_empty(), "{script}: empty output");
        assert!(stdout.contains(section), "no {section:?} section");
        assert!(!md.contains("FAILED"), "{script}: {md}");
    }
}
