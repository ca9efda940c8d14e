//! Compiles `csi.proto` with protox (a pure-Rust protobuf compiler), so building needs
//! neither network nor a system `protoc`.
//!
//! Besides the tonic/prost code it writes the encoded `FileDescriptorSet` to
//! `$OUT_DIR/csi_descriptor.bin`. That copy is produced by protox's own encoder, which
//! keeps custom options such as `csi_secret` (prost's `FileDescriptorSet` type drops
//! them), so tests and gRPC reflection see the options the sidecars rely on.

use std::path::PathBuf;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    println!("cargo:rerun-if-changed=csi.proto");
    let mut compiler = protox::Compiler::new(["."])?;
    compiler
        .include_source_info(true)
        .include_imports(true)
        .open_file("csi.proto")?;

    let out_dir = PathBuf::from(std::env::var("OUT_DIR")?);
    std::fs::write(
        out_dir.join("csi_descriptor.bin"),
        compiler.encode_file_descriptor_set(),
    )?;

    tonic_prost_build::configure()
        .build_server(true)
        .build_client(true)
        .compile_fds(compiler.file_descriptor_set())?;
    Ok(())
}
