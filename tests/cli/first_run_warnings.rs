//! Warnings a new user meets on a first run: bf16 asked for on a CPU that has no bf16 hardware,
//! and a file saved under an official checkpoint name whose md5 is not the published one.
use crate::common::{self, argv};

use std::path::{Path, PathBuf};
use std::process::Output;

fn mae<S: AsRef<std::ffi::OsStr>>(args: &[S], cpuinfo: Option<&Path>, dir: &Path) -> Output {
    let mut cmd = common::mae_command(args);
    cmd.current_dir(dir).env("OMP_NUM_THREADS", "1");
    if let Some(c) = cpuinfo {
        cmd.env("MAE_CPUINFO", c);
    }
    cmd.output().expect("mae runs")
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// The shipped Fashion-MNIST MAE copied under `name` into a scratch folder.
fn renamed_checkpoint(dir: &Path, name: &str) -> PathBuf {
    let src = common::root().join("weights/mae_pretrain_fmnist_mini_patch4.pth");
    let dst = dir.join(name);
    std::fs::copy(&src, &dst).unwrap_or_else(|e| panic!("{}: {e}", src.display()));
    dst
}

const WARNING: &str = "warning: --precision bf16 on a CPU without bf16 hardware";

#[test]
fn bf16_on_a_cpu_without_bf16_hardware_warns_once_and_still_runs() {
    let dir = common::scratch();
    // /proc/cpuinfo of a 2-core AMD EPYC without bf16 (flags abridged) and of a Xeon with AMX
    let epyc = dir.join("cpuinfo_epyc");
    let xeon = dir.join("cpuinfo_xeon");
    let flags =
        "fpu vme de pse tsc msr pae mce cx8 apic sse sse2 avx avx2 avx512f avx512bw avx512_vnni";
    let mut cpu = String::new();
    for i in 0..2 {
        cpu += &format!("processor\t: {i}\nmodel name\t: AMD EPYC 9R14\nflags\t\t: {flags}\n\n");
    }
    std::fs::write(&epyc, &cpu).unwrap();
    std::fs::write(
        &xeon,
        cpu.replace("avx512_vnni", "avx512_vnni avx512_bf16 amx_bf16 amx_tile"),
    )
    .unwrap();
    let run = |precision: &str, cpuinfo: &Path| {
        let out = mae(
            &argv!("visualize --precision {} --out v.png", precision),
            Some(cpuinfo),
            &dir,
        );
        assert!(out.status.success(), "{}", text(&out.stderr));
        text(&out.stderr)
    };
    let stderr = run("bf16", &epyc);
    assert_eq!(stderr.matches(WARNING).count(), 1, "{stderr}");
    assert!(stderr.contains("use --precision fp32"), "{stderr}");
    let stderr = run("bf16", &xeon);
    assert!(!stderr.contains(WARNING), "{stderr}");
    let stderr = run("fp32", &epyc);
    assert!(!stderr.contains(WARNING), "{stderr}");
}

#[test]
fn inspect_shows_the_outline_of_a_file_under_an_official_name_then_the_md5_mismatch() {
    let dir = common::scratch();
    let ckpt = renamed_checkpoint(&dir, "mae_finetuned_vit_large.pth");
    let path = ckpt.to_str().unwrap();

    let out = mae(&["inspect", path], None, &dir);
    let (stdout, stderr) = (text(&out.stdout), text(&out.stderr));
    assert!(out.status.success(), "{stderr}");
    assert!(stdout.contains("model: mae_vit_mini_patch4"), "{stdout}");
    assert!(stdout.contains("decoder_pred.weight"), "{stdout}");
    assert!(
        stderr.contains(
            "does not start with 51f550, the prefix published for mae_finetuned_vit_large.pth"
        ),
        "{stderr}"
    );
    assert!(stderr.contains("--verify makes this an error"), "{stderr}");

    // --verify: the same outline, then a non-zero exit on the mismatch
    let out = mae(&["inspect", path, "--verify"], None, &dir);
    let (stdout, stderr) = (text(&out.stdout), text(&out.stderr));
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stdout.contains("model: mae_vit_mini_patch4"), "{stdout}");
    assert!(stderr.contains("does not start with 51f550"), "{stderr}");

    // under its own name nothing is hashed against the official list, and nothing is said
    let own = common::root().join("weights/mae_pretrain_fmnist_mini_patch4.pth");
    let out = mae(&["inspect", own.to_str().unwrap()], None, &dir);
    assert!(out.status.success());
    assert!(!text(&out.stderr).contains("md5"), "{}", text(&out.stderr));
}

#[test]
fn visualize_warns_on_an_official_name_with_another_md5_and_goes_on() {
    let dir = common::scratch();
    let ckpt = renamed_checkpoint(&dir, "mae_pretrain_vit_base.pth");
    let image = common::shared_image("chelsea.png");
    let args = argv!(
        "visualize --checkpoint {} --image {} --out v.png",
        ckpt.display(),
        image.display()
    );
    let out = mae(&args, None, &dir);
    let stderr = text(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(
        stderr.contains("warning: ") && stderr.contains("does not start with 8cad7c"),
        "{stderr}"
    );
    assert!(dir.join("v.png").exists());
}
