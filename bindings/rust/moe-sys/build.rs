// Finds libmoe for the linker: MOE_LIB_DIR when set, else pkg-config's `moe` (PKG_CONFIG names another
// pkg-config). Publishes the library directory to dependents as DEP_MOE_LIBDIR (links = "moe").
use std::env;
use std::process::Command;

fn main() {
    println!("cargo:rerun-if-env-changed=MOE_LIB_DIR");
    println!("cargo:rerun-if-env-changed=PKG_CONFIG");
    println!("cargo:rerun-if-env-changed=PKG_CONFIG_PATH");
    println!("cargo:rerun-if-changed=build.rs");

    if let Some(dir) = env::var_os("MOE_LIB_DIR") {
        let dir = dir.to_string_lossy().into_owned();
        println!("cargo:rustc-link-search=native={}", dir);
        println!("cargo:rustc-link-lib=dylib=moe");
        println!("cargo:libdir={}", dir);
        return;
    }

    let pkg_config = env::var("PKG_CONFIG").unwrap_or_else(|_| "pkg-config".to_string());
    let libs = Command::new(&pkg_config).args(["--libs", "moe"]).output();
    match libs {
        Ok(out) if out.status.success() => {
            let text = String::from_utf8_lossy(&out.stdout).into_owned();
            let mut linked = false;
            for flag in text.split_whitespace() {
                if let Some(dir) = flag.strip_prefix("-L") {
                    println!("cargo:rustc-link-search=native={}", dir);
                } else if let Some(lib) = flag.strip_prefix("-l") {
                    println!("cargo:rustc-link-lib={}", lib);
                    linked |= lib == "moe";
                }
            }
            if !linked {
                println!("cargo:rustc-link-lib=dylib=moe");
            }
            let libdir = Command::new(&pkg_config).args(["--variable=libdir", "moe"]).output();
            if let Ok(out) = libdir {
                let dir = String::from_utf8_lossy(&out.stdout).trim().to_string();
                if out.status.success() && !dir.is_empty() {
                    println!("cargo:libdir={}", dir);
                }
            }
        }
        _ => {
            println!(
                "cargo:warning=pkg-config does not know moe (set PKG_CONFIG_PATH to the directory of \
                 moe.pc, or MOE_LIB_DIR to the directory of libmoe.so); trying -lmoe"
            );
            println!("cargo:rustc-link-lib=dylib=moe");
        }
    }
}
