//! kill -9 during a `mae pretrain` run that saves every epoch (at random moments and while
//! checkpoint-N.pth is being written), then `--resume` from the newest checkpoint: every
//! checkpoint on disk is complete (torch.load(weights_only=True) reads it) and the resumed run's
//! checkpoints equal an uninterrupted run's, bit for bit. The short version of
//! tools/kill_resume.py (docs/RELIABILITY.md has the 50-kill run).
use crate::common;

#[test]
fn killed_runs_resume_bit_identical() {
    let dir = common::scratch();
    let out = common::run_python(
        &common::root().join("tools/kill_resume.py"),
        &[
            env!("CARGO_BIN_EXE_mae"),
            dir.to_str().unwrap(),
            "--kills",
            "4",
        ],
    );
    assert!(out.contains("kills: 4 ("), "{out}");
    assert!(out.contains("bit-identical"), "{out}");
}
