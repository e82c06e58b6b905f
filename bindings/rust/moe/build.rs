// Lets this crate's own tests and examples find libmoe at run time without LD_LIBRARY_PATH: on ELF
// targets they get an rpath to the directory moe-sys linked against (DEP_MOE_LIBDIR).
use std::env;

fn main() {
    println!("cargo:rerun-if-env-changed=DEP_MOE_LIBDIR");
    let os = env::var("CARGO_CFG_TARGET_OS").unwrap_or_default();
    if let Ok(dir) = env::var("DEP_MOE_LIBDIR") {
        if os == "linux" || os == "freebsd" {
            println!("cargo:rustc-link-arg=-Wl,-rpath,{}", dir);
        }
    }
}
