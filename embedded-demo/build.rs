//! Link setup per board.
//!
//! * `board-mps2`: we provide `memory.x` (the MPS2 code/data SSRAMs as QEMU maps them) and an
//!   empty `device.x` (our own `__INTERRUPTS` table lives in `src/board/mps2/irq.rs`).
//! * `board-nucleo-h743`: embassy-stm32 (`memory-x`, `rt`) provides `memory.x` and `device.x`;
//!   we only add the defmt linker script.

use std::env;
use std::fs;
use std::path::PathBuf;

fn main() {
    let out = PathBuf::from(env::var_os("OUT_DIR").expect("OUT_DIR"));
    let mps2 = env::var_os("CARGO_FEATURE_BOARD_MPS2").is_some();
    let nucleo = env::var_os("CARGO_FEATURE_BOARD_NUCLEO_H743").is_some();

    if mps2 && !nucleo {
        fs::copy("memory-mps2.x", out.join("memory.x")).expect("copy memory-mps2.x");
        fs::write(
            out.join("device.x"),
            "/* interrupt table is defined in Rust */\n",
        )
        .expect("write device.x");
        println!("cargo:rustc-link-search={}", out.display());
    }
    if nucleo && !mps2 {
        println!("cargo:rustc-link-arg-bins=-Tdefmt.x");
    }
    // Both or none selected: src/board/mod.rs stops the build with a clear message.

    println!("cargo:rerun-if-changed=memory-mps2.x");
    println!("cargo:rerun-if-changed=build.rs");
}
