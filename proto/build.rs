//! Generates tonic/prost code, serde (proto3 JSON) impls and the reflection descriptor set
//! from every `.proto` file under `vireo/`.

use std::path::{Path, PathBuf};

fn proto_files(dir: &Path, out: &mut Vec<PathBuf>) -> std::io::Result<()> {
    for entry in std::fs::read_dir(dir)? {
        let path = entry?.path();
        if path.is_dir() {
            proto_files(&path, out)?;
        } else if path.extension().is_some_and(|ext| ext == "proto") {
            out.push(path);
        }
    }
    Ok(())
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let root = PathBuf::from(std::env::var("CARGO_MANIFEST_DIR")?);
    let out_dir = PathBuf::from(std::env::var("OUT_DIR")?);
    let mut protos = Vec::new();
    proto_files(&root.join("vireo"), &mut protos)?;
    protos.sort();
    println!("cargo:rerun-if-changed=vireo");
    for proto in &protos {
        println!("cargo:rerun-if-changed={}", proto.display());
    }

    let descriptor_path = out_dir.join("vireo_descriptor.bin");
    tonic_prost_build::configure()
        .file_descriptor_set_path(&descriptor_path)
        // Every RPC without a real handler answers UNIMPLEMENTED; the server's pending-work layer
        // rewrites the message to name the issue that brings it.
        .generate_default_stubs(true)
        // Bulk data (uploads, downloads, consoles) is decoded as a view of the received frame
        // instead of a copy.
        .bytes(".vireo.common.v1.DataChunk.data")
        .compile_protos(&protos, std::slice::from_ref(&root))?;

    let descriptors = std::fs::read(&descriptor_path)?;
    pbjson_build::Builder::new()
        .register_descriptors(&descriptors)?
        .build(&[".vireo"])?;
    Ok(())
}
