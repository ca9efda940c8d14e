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

    let fds = compiler.file_descriptor_set();
    let secret_bearing = secret_bearing_messages(&fds);
    std::fs::write(
        out_dir.join("redacted_debug.rs"),
        redacted_debug(&secret_bearing),
    )?;
    tonic_prost_build::configure()
        .build_server(true)
        .build_client(true)
        .skip_debug(
            secret_bearing
                .iter()
                .map(|m| format!(".csi.v1.{}", m.name())),
        )
        .compile_fds(fds)?;
    Ok(())
}

/// Top-level `csi.v1` messages with a `secrets` field: prost's derived Debug would print
/// the secrets of any request someone formats with `{:?}`, so these get a Debug that
/// names the secret keys' count only.
fn secret_bearing_messages(
    fds: &prost_types::FileDescriptorSet,
) -> Vec<prost_types::DescriptorProto> {
    fds.file
        .iter()
        .filter(|f| f.package() == "csi.v1")
        .flat_map(|f| f.message_type.iter())
        .filter(|m| m.field.iter().any(|f| f.name() == "secrets"))
        .cloned()
        .collect()
}

/// `impl Debug` for each message: every field as prost would print it, except
/// `secrets`, shown as `<N redacted>`; a oneof appears once, under its own name.
fn redacted_debug(messages: &[prost_types::DescriptorProto]) -> String {
    const KEYWORDS: &[&str] = &["type", "ref", "match", "mod", "fn", "use", "self", "async"];
    let mut out = String::new();
    for m in messages {
        let name = m.name();
        out.push_str(&format!(
            "impl ::core::fmt::Debug for {name} {{\n    \
             fn fmt(&self, f: &mut ::core::fmt::Formatter<'_>) -> ::core::fmt::Result {{\n        \
             let mut s = f.debug_struct(\"{name}\");\n"
        ));
        let mut seen_oneofs = Vec::new();
        for field in &m.field {
            let field_name = match field.oneof_index {
                Some(i) if !field.proto3_optional() => {
                    if seen_oneofs.contains(&i) {
                        continue;
                    }
                    seen_oneofs.push(i);
                    m.oneof_decl[i as usize].name().to_owned()
                }
                _ => field.name().to_owned(),
            };
            let ident = if KEYWORDS.contains(&field_name.as_str()) {
                format!("r#{field_name}")
            } else {
                field_name.clone()
            };
            if field_name == "secrets" {
                out.push_str(
                    "        s.field(\"secrets\", &format_args!(\"<{} redacted>\", self.secrets.len()));\n",
                );
            } else {
                out.push_str(&format!(
                    "        s.field(\"{field_name}\", &self.{ident});\n"
                ));
            }
        }
        out.push_str("        s.finish()\n    }\n}\n\n");
    }
    out
}
