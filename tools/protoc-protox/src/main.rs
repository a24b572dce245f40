//! A stand-in for `protoc` built on protox, for build scripts that run
//! `protoc` (prost-build does, e.g. in etcd-client's build script). It
//! implements the subset prost-build calls:
//!
//! ```text
//! protoc [-I DIR | -IDIR | --proto_path DIR | --proto_path=DIR]...
//!        [-o FILE | -oFILE | --descriptor_set_out FILE | --descriptor_set_out=FILE]
//!        [--include_imports] [--include_source_info] FILE.proto...
//! protoc --version
//! ```
//!
//! Anything else is refused with exit 1 and a message naming the option, so
//! a build script that needs more fails loudly instead of getting a wrong set.

use std::path::PathBuf;
use std::process::ExitCode;

/// What `--version` answers: build scripts parse `libprotoc MAJOR.MINOR`.
const VERSION: &str = "libprotoc 3.21.12";

#[derive(Debug, Default, PartialEq)]
struct Invocation {
    includes: Vec<PathBuf>,
    out: Option<PathBuf>,
    include_imports: bool,
    include_source_info: bool,
    files: Vec<PathBuf>,
    version: bool,
}

fn parse(args: impl IntoIterator<Item = String>) -> Result<Invocation, String> {
    let mut inv = Invocation::default();
    let mut args = args.into_iter();
    while let Some(arg) = args.next() {
        let mut value_of = |name: &str| {
            args.next()
                .ok_or_else(|| format!("{name} needs a value"))
                .map(PathBuf::from)
        };
        match arg.as_str() {
            "--version" => inv.version = true,
            "--include_imports" => inv.include_imports = true,
            "--include_source_info" => inv.include_source_info = true,
            "-I" | "--proto_path" => inv.includes.push(value_of(&arg)?),
            "-o" | "--descriptor_set_out" => inv.out = Some(value_of(&arg)?),
            _ => {
                if let Some(dir) = arg
                    .strip_prefix("--proto_path=")
                    .or_else(|| arg.strip_prefix("-I"))
                {
                    inv.includes.push(PathBuf::from(dir));
                } else if let Some(file) = arg
                    .strip_prefix("--descriptor_set_out=")
                    .or_else(|| arg.strip_prefix("-o"))
                {
                    inv.out = Some(PathBuf::from(file));
                } else if arg.starts_with('-') {
                    return Err(format!(
                        "unsupported option {arg:?} (this protoc stand-in implements -I, -o, \
                         --include_imports, --include_source_info and --version)"
                    ));
                } else {
                    inv.files.push(PathBuf::from(arg));
                }
            }
        }
    }
    Ok(inv)
}

fn run(inv: &Invocation) -> Result<(), String> {
    let out = inv
        .out
        .as_ref()
        .ok_or("missing -o/--descriptor_set_out: only descriptor sets are produced")?;
    if inv.files.is_empty() {
        return Err("missing input file".into());
    }
    // protoc searches the current folder when no -I is given.
    let includes = if inv.includes.is_empty() {
        vec![PathBuf::from(".")]
    } else {
        inv.includes.clone()
    };
    let mut compiler = protox::Compiler::new(&includes).map_err(|e| format!("{e:?}"))?;
    compiler
        .include_imports(inv.include_imports)
        .include_source_info(inv.include_source_info);
    compiler
        .open_files(&inv.files)
        .map_err(|e| format!("{e:?}"))?;
    std::fs::write(out, compiler.encode_file_descriptor_set())
        .map_err(|e| format!("cannot write {}: {e}", out.display()))
}

fn main() -> ExitCode {
    let inv = match parse(std::env::args().skip(1)) {
        Ok(inv) => inv,
        Err(e) => {
            eprintln!("protoc (protox stand-in): {e}");
            return ExitCode::FAILURE;
        }
    };
    if inv.version {
        println!("{VERSION}");
        return ExitCode::SUCCESS;
    }
    match run(&inv) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("protoc (protox stand-in): {e}");
            ExitCode::FAILURE
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(list: &[&str]) -> Vec<String> {
        list.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn both_forms_of_each_option_parse() {
        let inv = parse(args(&[
            "-I",
            "a",
            "-Ib",
            "--proto_path",
            "c",
            "--proto_path=d",
            "-o",
            "x.bin",
            "--include_imports",
            "--include_source_info",
            "f.proto",
        ]))
        .unwrap();
        assert_eq!(inv.includes, ["a", "b", "c", "d"].map(PathBuf::from));
        assert_eq!(inv.out, Some(PathBuf::from("x.bin")));
        assert!(inv.include_imports && inv.include_source_info);
        assert_eq!(inv.files, [PathBuf::from("f.proto")]);
        assert_eq!(
            parse(args(&["-oy.bin"])).unwrap().out,
            Some(PathBuf::from("y.bin"))
        );
        assert_eq!(
            parse(args(&["--descriptor_set_out=z.bin"])).unwrap().out,
            Some(PathBuf::from("z.bin"))
        );
    }

    #[test]
    fn unknown_options_and_missing_values_are_refused() {
        assert!(parse(args(&["--rust_out=x"])).is_err());
        assert!(parse(args(&["-I"])).is_err());
    }

    #[test]
    fn compiles_a_file_with_an_import() {
        let dir = std::env::temp_dir().join(format!("protoc-protox-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(
            dir.join("a.proto"),
            "syntax = \"proto3\"; package t; import \"google/protobuf/empty.proto\"; \
             message A { google.protobuf.Empty e = 1; }",
        )
        .unwrap();
        let out = dir.join("set.bin");
        let inv = parse(args(&[
            &format!("-I{}", dir.display()),
            "-o",
            out.to_str().unwrap(),
            "--include_imports",
            dir.join("a.proto").to_str().unwrap(),
        ]))
        .unwrap();
        run(&inv).unwrap();
        let bytes = std::fs::read(&out).unwrap();
        std::fs::remove_dir_all(&dir).unwrap();
        assert!(!bytes.is_empty());
    }
}
