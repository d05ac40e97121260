// Link-time set-up so that `target/*/mae` and the test binaries run without LD_LIBRARY_PATH
// and see CUDA when the libtorch they are linked against has it; compiles csrc/autocast.cpp
// (libtorch's autocast state for src/util/amp.rs) against the same libtorch's headers.
use std::path::PathBuf;

fn main() {
    println!("cargo:rerun-if-env-changed=LIBTORCH");
    println!("cargo:rerun-if-changed=build.rs");
    println!("cargo:rerun-if-changed=csrc/autocast.cpp");
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
        .compile("mae_autocast");

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
