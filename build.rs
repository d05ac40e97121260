// Link-time set-up so that `target/*/mae` and the test binaries run without LD_LIBRARY_PATH
// and see CUDA when the libtorch they are linked against has it; compiles csrc/autocast.cpp
// (libtorch's autocast state for src/torch/amp.rs), csrc/optim.cpp (the optimizers' and the
// gradient scaler's ATen calls tch lacks) and csrc/c10d.cpp (c10d's TCPStore and
// ProcessGroupGloo / ProcessGroupNCCL for src/torch/distributed/mod.rs) against the same libtorch's
// headers.
use std::path::{Path, PathBuf};

fn main() {
    println!("cargo:rerun-if-env-changed=LIBTORCH");
    println!("cargo:rerun-if-changed=build.rs");
    println!("cargo:rerun-if-changed=csrc/autocast.cpp");
    println!("cargo:rerun-if-changed=csrc/c10d.cpp");
    println!("cargo:rerun-if-changed=csrc/optim.cpp");
    let Ok(libtorch) = std::env::var("LIBTORCH") else {
        panic!("LIBTORCH is not set: .cargo/config.toml points it at .libtorch (tools/setup.sh)");
    };
    let root = PathBuf::from(libtorch);
    // The symbols are in libtorch_cpu, which torch-sys links already.
    cc::Build::new()
        .cpp(true)
        .pic(true)
        .std("c++17")
        .define("_GLIBCXX_USE_CXX11_ABI", "1")
        .include(root.join("include"))
        .include(root.join("include/torch/csrc/api/include"))
        .flag_if_supported("-Wno-unused-parameter")
        .file("csrc/autocast.cpp")
        .file("csrc/optim.cpp")
        .compile("mae_autocast");
    build_c10d(&root);

    // Resolve the .libtorch symlink so the rpath names the wheel's real directory.
    let lib = std::fs::canonicalize(root.join("lib")).unwrap_or_else(|_| root.join("lib"));
    println!("cargo:rustc-link-arg=-Wl,-rpath,{}", lib.display());
    if lib.join("libtorch_cuda.so").exists() {
        // Without --no-as-needed the linker drops libtorch_cuda (no symbol is referenced
        // directly) and tch::Cuda::is_available() is false on GPU machines.
        println!("cargo:rustc-link-search=native={}", lib.display());
        println!("cargo:rustc-link-arg=-Wl,--no-as-needed");
        println!("cargo:rustc-link-arg=-ltorch_cuda");
        println!("cargo:rustc-link-arg=-Wl,--as-needed");
    }
}

/// csrc/c10d.cpp: Gloo always (headers from Debian's libgloo-dev; only `c10d::` symbols are
/// called, and those are in libtorch_cpu), NCCL with `--features nccl` (symbols in
/// libtorch_cuda; nccl.h from the nvidia-nccl wheel, the CUDA headers from the nvidia-cu13 wheels
/// and the crt/cccl headers tools/setup.sh puts in .venv/cuda-headers).
fn build_c10d(root: &Path) {
    let mut build = cc::Build::new();
    build
        .cpp(true)
        .pic(true)
        .std("c++17")
        .define("_GLIBCXX_USE_CXX11_ABI", "1")
        .define("USE_C10D_GLOO", None)
        .include(root.join("include"))
        .include(root.join("include/torch/csrc/api/include"))
        .flag_if_supported("-Wno-unused-parameter")
        .flag_if_supported("-Wno-deprecated-declarations")
        .flag_if_supported("-Wno-interference-size")
        .file("csrc/c10d.cpp");
    if std::env::var_os("CARGO_FEATURE_NCCL").is_some() {
        // .libtorch -> site-packages/torch; the nvidia wheels sit beside it.
        let torch = std::fs::canonicalize(root).unwrap_or_else(|_| root.to_path_buf());
        let nvidia = torch.with_file_name("nvidia");
        let venv_headers = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
            .join(".venv/cuda-headers/nvidia/cu13/include");
        let dirs = [
            nvidia.join("nccl/include"),
            nvidia.join("cu13/include"),
            venv_headers.clone(),
            venv_headers.join("cccl"),
        ];
        for d in &dirs {
            if !d.exists() {
                panic!(
                    "--features nccl: {} is missing (tools/setup.sh installs the NCCL/CUDA headers)",
                    d.display()
                );
            }
            build.include(d);
        }
        build
            .define("USE_C10D_NCCL", None)
            .define("USE_CUDA", None)
            .define("MAE_C10D_NCCL", None);
    }
    build.compile("mae_c10d");
    if std::env::var_os("CARGO_FEATURE_NCCL").is_some() {
        // c10::cuda::set_device (torch.cuda.set_device) is in libc10_cuda
        let lib = std::fs::canonicalize(root.join("lib")).unwrap_or_else(|_| root.join("lib"));
        println!("cargo:rustc-link-search=native={}", lib.display());
        println!("cargo:rustc-link-lib=dylib=c10_cuda");
    }
}
