//! Lists every file of the contract (`wit/`) for the scaffold, which writes them into each
//! new project: a WIT package added to `wit/deps` reaches new projects without a code change.

use std::path::{Path, PathBuf};

fn main() {
    let wit = Path::new(env!("CARGO_MANIFEST_DIR")).join("../wit");
    println!("cargo:rerun-if-changed={}", wit.display());
    let mut files = Vec::new();
    collect(&wit, &mut files);
    files.sort();
    let mut list = String::from("&[\n");
    for file in &files {
        let relative = file.strip_prefix(wit.parent().unwrap()).unwrap();
        println!("cargo:rerun-if-changed={}", file.display());
        list.push_str(&format!(
            "    ({:?}, include_str!({:?})),\n",
            relative.to_str().expect("WIT paths are UTF-8"),
            file.canonicalize().unwrap().to_str().unwrap()
        ));
    }
    list.push_str("]\n");
    let out = PathBuf::from(std::env::var("OUT_DIR").unwrap()).join("wit_files.rs");
    std::fs::write(out, list).unwrap();
}

/// Every `.wit` file under `dir`.
fn collect(dir: &Path, files: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            println!("cargo:rerun-if-changed={}", path.display());
            collect(&path, files);
        } else if path.extension().is_some_and(|ext| ext == "wit") {
            files.push(path);
        }
    }
}
