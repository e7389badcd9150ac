//! Build-time inputs of the firmware.
//!
//! * Link setup per board:
//!   * `board-mps2`: we provide `memory.x` (the MPS2 code/data SSRAMs as QEMU maps them) and
//!     an empty `device.x` (our own `__INTERRUPTS` table lives in `src/board/mps2/irq.rs`).
//!   * `board-nucleo-h743`: embassy-stm32 (`memory-x`, `rt`) provides `memory.x` and
//!     `device.x`; we only add the defmt linker script.
//!   * both: `flash-image.x` puts the NBD `iso` image into its own flash section
//!     (`.nbd_image`, right after `.rodata`), so `llvm-size` reports code and image apart.
//! * TLS credentials: the directory named by `KVMIO_CREDS` (QEMU `tls-creds-x509` layout, e.g.
//!   made by `kvmio creds generate DIR`): `ca-cert.pem`, `server-cert.pem`, `server-key.pem`
//!   and the optional `ca-crl.pem` are copied into `OUT_DIR/creds/` and compiled in. Nothing
//!   is committed; without the variable the build stops with a message saying what to do.
//! * The build time (`SOURCE_DATE_EPOCH` if set, else now) as `KVMIO_BUILD_UNIX_TIME`: the
//!   firmware's wall clock for certificate validity is this plus its uptime.
//! * The NBD `iso` test image: a deterministic pattern with zero regions
//!   (`OUT_DIR/flash-image.bin`, embedded with `include_bytes!`), also written to
//!   `target/thumbv7em-none-eabihf/<profile>/flash-image.bin` for the tests to compare with.

use std::env;
use std::fs;
use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

/// Size of the `iso` image.
const IMAGE_LEN: usize = 512 * 1024;
/// Zero regions of the image (offset, length), 4 KiB aligned: BLOCK_STATUS reports them.
const ZERO_REGIONS: [(usize, usize); 3] = [
    (0x1_0000, 0x1_0000), // 64 KiB at 64 KiB
    (0x4_8000, 0x1_8000), // 96 KiB at 288 KiB
    (0x7_C000, 0x4000),   // the last 16 KiB
];

fn main() {
    let out = PathBuf::from(env::var_os("OUT_DIR").expect("OUT_DIR"));
    link_setup(&out);
    credentials(&out);
    build_time();
    image(&out);
    println!("cargo:rerun-if-changed=build.rs");
}

fn link_setup(out: &Path) {
    let mps2 = env::var_os("CARGO_FEATURE_BOARD_MPS2").is_some();
    let nucleo = env::var_os("CARGO_FEATURE_BOARD_NUCLEO_H743").is_some();
    if mps2 && !nucleo {
        fs::copy("memory-mps2.x", out.join("memory.x")).expect("copy memory-mps2.x");
        fs::write(
            out.join("device.x"),
            "/* interrupt table is defined in Rust */\n",
        )
        .expect("write device.x");
    }
    if nucleo && !mps2 {
        println!("cargo:rustc-link-arg-bins=-Tdefmt.x");
    }
    // Both or none selected: src/board/mod.rs stops the build with a clear message.
    fs::write(
        out.join("flash-image.x"),
        "/* The NBD `iso` image, in flash after .rodata (see build.rs). */\n\
         SECTIONS\n{\n  .nbd_image : ALIGN(4)\n  {\n    KEEP(*(.nbd_image .nbd_image.*));\n  } > FLASH\n}\n\
         INSERT AFTER .rodata;\n",
    )
    .expect("write flash-image.x");
    println!("cargo:rustc-link-search={}", out.display());
    println!("cargo:rustc-link-arg-bins=-Tflash-image.x");
    println!("cargo:rerun-if-changed=memory-mps2.x");
}

fn credentials(out: &Path) {
    println!("cargo:rerun-if-env-changed=KVMIO_CREDS");
    let Some(dir) = env::var_os("KVMIO_CREDS") else {
        panic!(
            "\n\nKVMIO_CREDS is not set.\n\
             The firmware compiles its TLS credentials in at build time from a directory in the \
             QEMU tls-creds-x509 layout (ca-cert.pem, server-cert.pem, server-key.pem, optional \
             ca-crl.pem). Create one and point KVMIO_CREDS at it, e.g.:\n\n    \
             (cd .. && cargo build --release -p kvmio)\n    \
             ../target/release/kvmio creds generate /tmp/mps2-creds --hostname mps2.test \
             --ip 127.0.0.1 --ip 10.0.2.15\n    \
             KVMIO_CREDS=/tmp/mps2-creds cargo build --release\n\n\
             Never commit keys: the directory stays outside the repository.\n"
        );
    };
    let dir = PathBuf::from(dir);
    let dst = out.join("creds");
    fs::create_dir_all(&dst).expect("create OUT_DIR/creds");
    for (name, required) in [
        ("ca-cert.pem", true),
        ("server-cert.pem", true),
        ("server-key.pem", true),
        ("ca-crl.pem", false),
    ] {
        let src = dir.join(name);
        println!("cargo:rerun-if-changed={}", src.display());
        match fs::read(&src) {
            Ok(bytes) => fs::write(dst.join(name), bytes).expect("write OUT_DIR/creds"),
            Err(e) if required => panic!(
                "\n\nKVMIO_CREDS={}: cannot read {name}: {e}\n\
                 The directory must hold ca-cert.pem, server-cert.pem and server-key.pem \
                 (make it with `kvmio creds generate DIR`).\n",
                dir.display()
            ),
            // An empty file means "no CRL" to the firmware.
            Err(_) => fs::write(dst.join(name), b"").expect("write OUT_DIR/creds"),
        }
    }
}

fn build_time() {
    println!("cargo:rerun-if-env-changed=SOURCE_DATE_EPOCH");
    let t = match env::var("SOURCE_DATE_EPOCH") {
        Ok(s) => s
            .trim()
            .parse::<u64>()
            .expect("SOURCE_DATE_EPOCH must be a Unix time in seconds"),
        Err(_) => SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .expect("clock before 1970")
            .as_secs(),
    };
    println!("cargo:rustc-env=KVMIO_BUILD_UNIX_TIME={t}");
}

/// SplitMix64: a fixed, documented generator, so the image is the same on every build.
fn splitmix64(x: u64) -> u64 {
    let mut z = x.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// The `iso` image: every 8-byte word at offset `o` is `splitmix64(o)` (little endian), except
/// a text header in the first 512 bytes and the zero regions.
fn make_image() -> Vec<u8> {
    let mut img = vec![0u8; IMAGE_LEN];
    for (i, w) in img.chunks_exact_mut(8).enumerate() {
        w.copy_from_slice(&splitmix64((i * 8) as u64).to_le_bytes());
    }
    let header = format!(
        "KVMIO EMBEDDED-DEMO TEST IMAGE v1\nsize {IMAGE_LEN}\nzero regions {ZERO_REGIONS:?}\n\
         pattern: le64 splitmix64(offset) per 8-byte word\n"
    );
    img[..512].fill(b' ');
    img[..header.len()].copy_from_slice(header.as_bytes());
    for (off, len) in ZERO_REGIONS {
        assert!(off % 4096 == 0 && len % 4096 == 0 && off + len <= IMAGE_LEN);
        img[off..off + len].fill(0);
    }
    img
}

fn image(out: &Path) {
    let img = make_image();
    fs::write(out.join("flash-image.bin"), &img).expect("write OUT_DIR/flash-image.bin");
    fs::write(
        out.join("image_len.rs"),
        format!(
            "/// Size of the `iso` image in bytes.\npub const IMAGE_LEN: usize = {IMAGE_LEN};\n"
        ),
    )
    .expect("write image_len.rs");
    // OUT_DIR is target/<triple>/<profile>/build/<pkg>-<hash>/out: the profile directory is
    // three levels up. The tests compare what the NBD server sends with this copy.
    if let Some(profile_dir) = out.ancestors().nth(3) {
        fs::write(profile_dir.join("flash-image.bin"), &img)
            .expect("write target/.../flash-image.bin");
    }
}
